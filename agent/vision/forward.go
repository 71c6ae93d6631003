package vision

/*
#cgo pkg-config: opencv4
#cgo CXXFLAGS: --std=c++11
#include <stdlib.h>
#include "forward.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	"gocv.io/x/gocv"
)

// ErrForward marks a forward OpenCV refused with an exception (a network
// whose input size or layers do not fit what it is given).
var ErrForward = errors.New("network forward failed")

// netPtr is the cv::dnn::Net* inside a gocv.Net: gocv v0.31's Net holds it
// as its only field and exports no accessor (TestForwardExceptionIsAnError
// fails if a gocv upgrade moves it).
func netPtr(n *gocv.Net) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(n)) }

// forward sets in as the input of net and runs it, returning the default
// output (names empty) or the named ones; an OpenCV exception is an error
// (ErrForward), never an abort of the process.
func forward(net *gocv.Net, in gocv.Mat, input string, names []string) ([]gocv.Mat, error) {
	k := max(1, len(names))
	outs := make([]gocv.Mat, k)
	ptrs := (*[1 << 20]unsafe.Pointer)(C.malloc(C.size_t(k) * C.size_t(unsafe.Sizeof(unsafe.Pointer(nil)))))[:k:k]
	defer C.free(unsafe.Pointer(&ptrs[0]))
	for i := range outs {
		outs[i] = gocv.NewMat()
		ptrs[i] = unsafe.Pointer(outs[i].Ptr())
	}
	var cnames **C.char
	if len(names) > 0 {
		cs := (*[1 << 20]*C.char)(C.malloc(C.size_t(len(names)) * C.size_t(unsafe.Sizeof((*C.char)(nil)))))[:len(names):len(names)]
		for i, s := range names {
			cs[i] = C.CString(s)
		}
		defer func() {
			for _, c := range cs {
				C.free(unsafe.Pointer(c))
			}
			C.free(unsafe.Pointer(&cs[0]))
		}()
		cnames = &cs[0]
	}
	cin := C.CString(input)
	defer C.free(unsafe.Pointer(cin))
	var msg [512]C.char
	rc := C.atm_net_forward(netPtr(net), unsafe.Pointer(in.Ptr()), cin, cnames, C.int(len(names)), &ptrs[0], &msg[0], C.size_t(len(msg)))
	if rc != 0 {
		for _, m := range outs {
			m.Close()
		}
		return nil, fmt.Errorf("%w: OpenCV: %s", ErrForward, C.GoString(&msg[0]))
	}
	return outs, nil
}
