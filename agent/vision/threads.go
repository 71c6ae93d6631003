package vision

/*
#cgo pkg-config: opencv4
#cgo CXXFLAGS: --std=c++11
#include "threads.h"
*/
import "C"

// SetNumThreads sets how many threads OpenCV uses for its parallel loops,
// DNN inference among them. n <= 0 restores OpenCV's default.
func SetNumThreads(n int) { C.atm_set_num_threads(C.int(n)) }

// NumThreads reports OpenCV's current thread count.
func NumThreads() int { return int(C.atm_get_num_threads()) }
