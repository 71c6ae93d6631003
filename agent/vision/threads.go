package vision

/*
#cgo pkg-config: opencv4
#cgo CXXFLAGS: --std=c++11
#include "threads.h"
*/
import "C"

import "sync"

var (
	threadsMu  sync.Mutex
	threadsSet = -2 // the count last set (-2: none yet)
)

// SetNumThreads sets how many threads OpenCV uses for its parallel loops,
// DNN inference among them. n <= 0 restores OpenCV's default.
//
// OpenCV's TBB backend (Debian's build) tears its thread arena down and
// builds a new one on every cv::setNumThreads call, even with the same
// count: a pipeline loaded while another one runs a forward (cluster's
// workers load theirs lazily, the demo's ATMs one after the other) made
// that forward crash or return wrong values. So the count is set only when
// it changes; pipelines of one process must ask for the same count.
func SetNumThreads(n int) {
	if n < 0 {
		n = -1
	}
	threadsMu.Lock()
	defer threadsMu.Unlock()
	if n == threadsSet {
		return
	}
	C.atm_set_num_threads(C.int(n))
	threadsSet = n
}

// NumThreads reports OpenCV's current thread count.
func NumThreads() int { return int(C.atm_get_num_threads()) }
