package vision

/*
#cgo pkg-config: opencv4
#cgo CXXFLAGS: --std=c++11
#include <stdlib.h>
#include "decode.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	"gocv.io/x/gocv"

	"github.com/periocular/atm-agent/internal/imagecheck"
)

// ErrDecode says OpenCV could not decode bytes that passed the header check.
var ErrDecode = errors.New("decode image")

// DecodeImage checks data's header against l (imagecheck.Check: format,
// pixel and byte limits, truncation) and only then decodes it to a BGR Mat,
// with OpenCV's C++ exceptions caught at the cgo boundary. The caller closes
// the Mat. Errors wrap imagecheck's sentinels or ErrDecode.
func DecodeImage(data []byte, l imagecheck.Limits) (gocv.Mat, error) {
	if _, err := imagecheck.Check(data, l); err != nil {
		return gocv.Mat{}, err
	}
	return decodeUnchecked(data)
}

// decodeUnchecked is cv::imdecode under try/catch, without the header check.
func decodeUnchecked(data []byte) (gocv.Mat, error) {
	if len(data) == 0 {
		return gocv.Mat{}, fmt.Errorf("%w: %w", ErrDecode, imagecheck.ErrEmpty)
	}
	m := gocv.NewMat()
	var msg [256]C.char
	rc := C.atm_imdecode(unsafe.Pointer(&data[0]), C.size_t(len(data)), C.int(gocv.IMReadColor),
		unsafe.Pointer(m.Ptr()), &msg[0], C.size_t(len(msg)))
	if rc != 0 {
		m.Close()
		return gocv.Mat{}, fmt.Errorf("%w: OpenCV: %s", ErrDecode, C.GoString(&msg[0]))
	}
	if m.Empty() {
		m.Close()
		return gocv.Mat{}, fmt.Errorf("%w: not a readable image", ErrDecode)
	}
	return m, nil
}
