#include <cstring>
#include <exception>
#include <string>
#include <vector>
#include <opencv2/core.hpp>
#include <opencv2/dnn.hpp>
#include "forward.h"

static void atm_forward_err(const char* msg, char* err, size_t errlen) {
    if (errlen == 0) return;
    std::strncpy(err, msg, errlen - 1);
    err[errlen - 1] = 0;
}

int atm_net_forward(void* net, void* in, const char* input_name, const char** names, int n, void** outs, char* err, size_t errlen) {
    try {
        cv::dnn::Net* nn = static_cast<cv::dnn::Net*>(net);
        nn->setInput(*static_cast<cv::Mat*>(in), input_name);
        if (n == 0) {
            *static_cast<cv::Mat*>(outs[0]) = nn->forward();
            return 0;
        }
        std::vector<cv::String> want;
        for (int i = 0; i < n; i++) want.push_back(names[i]);
        std::vector<cv::Mat> got;
        nn->forward(got, want);
        for (int i = 0; i < n && i < (int)got.size(); i++) {
            *static_cast<cv::Mat*>(outs[i]) = got[i];
        }
        return 0;
    } catch (const cv::Exception& e) {
        atm_forward_err(e.err.empty() ? e.what() : e.err.c_str(), err, errlen);
    } catch (const std::exception& e) {
        atm_forward_err(e.what(), err, errlen);
    } catch (...) {
        atm_forward_err("unknown exception", err, errlen);
    }
    return 1;
}
