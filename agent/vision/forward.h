#ifndef ATM_FORWARD_H
#define ATM_FORWARD_H
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif
// atm_net_forward sets in (a cv::Mat*) as net's input (a cv::dnn::Net*,
// under input_name, "" for the default) and runs the forward: into outs[0]
// for the default output when n is 0, else into outs[i] (cv::Mat*) for
// names[i]. Inside try/catch: gocv v0.31's Net_Forward lets a C++
// exception escape, and one crossing the cgo boundary aborts the process
// (a manifest whose input size does not fit the network did so at the
// first visit). Returns 0 on success, 1 on an exception (its message in
// err, NUL-terminated).
int atm_net_forward(void* net, void* in, const char* input_name, const char** names, int n, void** outs, char* err, size_t errlen);
#ifdef __cplusplus
}
#endif
#endif
