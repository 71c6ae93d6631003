#ifndef ATM_DECODE_H
#define ATM_DECODE_H
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif
// atm_imdecode decodes buf into dst (a cv::Mat*) with cv::imdecode inside
// try/catch: gocv v0.31's Image_IMDecode lets a C++ exception escape, and an
// exception crossing the cgo boundary aborts the process. Returns 0 on
// success, 1 on an exception (its message in err, NUL-terminated).
int atm_imdecode(const void* buf, size_t len, int flags, void* dst, char* err, size_t errlen);
#ifdef __cplusplus
}
#endif
#endif
