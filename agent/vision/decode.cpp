#include <cstring>
#include <exception>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include "decode.h"

static void atm_copy_err(const char* msg, char* err, size_t errlen) {
    if (errlen == 0) return;
    std::strncpy(err, msg, errlen - 1);
    err[errlen - 1] = 0;
}

int atm_imdecode(const void* buf, size_t len, int flags, void* dst, char* err, size_t errlen) {
    try {
        // A header over the caller's bytes: no copy of the file.
        cv::Mat in(1, (int)len, CV_8UC1, const_cast<void*>(buf));
        cv::Mat* out = static_cast<cv::Mat*>(dst);
        cv::imdecode(in, flags, out);
        return 0;
    } catch (const cv::Exception& e) {
        atm_copy_err(e.err.empty() ? e.what() : e.err.c_str(), err, errlen);
    } catch (const std::exception& e) {
        atm_copy_err(e.what(), err, errlen);
    } catch (...) {
        atm_copy_err("unknown exception", err, errlen);
    }
    return 1;
}
