package tfgraph

import (
	"fmt"
	"math"
)

type folder func(n *Node, in []*value) (*value, error)

// folders evaluate ops whose inputs are all constant (shape arithmetic).
var folders = map[string]folder{
	"Identity": func(n *Node, in []*value) (*value, error) { return in[0], nil },
	"Cast":     func(n *Node, in []*value) (*value, error) { return in[0], nil },
	"Shape": func(n *Node, in []*value) (*value, error) {
		return &value{shape: []int{len(in[0].shape)}, c: floats(in[0].shape)}, nil
	},
	"Reshape":      foldReshape,
	"Squeeze":      foldReshape,
	"ExpandDims":   foldReshape,
	"Pack":         foldPack,
	"ConcatV2":     foldConcat,
	"StridedSlice": foldStridedSlice,
	"Add":          foldBinary(func(a, b float64) float64 { return a + b }),
	"AddV2":        foldBinary(func(a, b float64) float64 { return a + b }),
	"Sub":          foldBinary(func(a, b float64) float64 { return a - b }),
	"Mul":          foldBinary(func(a, b float64) float64 { return a * b }),
	"RealDiv":      foldBinary(func(a, b float64) float64 { return a / b }),
	"Maximum":      foldBinary(math.Max),
	"Minimum":      foldBinary(math.Min),
}

func foldReshape(n *Node, in []*value) (*value, error) {
	x := in[0]
	var shape []int
	switch n.Op {
	case "Reshape":
		shape = resolveShape(ints(in[1].c), len(x.c))
	case "Squeeze":
		shape = squeeze(x.shape, n.Attr["squeeze_dims"].ints())
	case "ExpandDims":
		shape = expandDims(x.shape, int(in[1].c[0]))
	}
	if numel(shape) != len(x.c) {
		return nil, fmt.Errorf("cannot reshape %v to %v", x.shape, shape)
	}
	return &value{shape: shape, c: x.c}, nil
}

func foldPack(n *Node, in []*value) (*value, error) {
	if n.Attr["axis"].int() != 0 {
		return nil, fmt.Errorf("constant Pack on axis %d not supported", n.Attr["axis"].int())
	}
	var c []float64
	for _, v := range in {
		if len(v.c) != len(in[0].c) {
			return nil, fmt.Errorf("Pack of unequal shapes")
		}
		c = append(c, v.c...)
	}
	return &value{shape: append([]int{len(in)}, in[0].shape...), c: c}, nil
}

func foldConcat(n *Node, in []*value) (*value, error) {
	parts := in[:len(in)-1]
	axis := int(in[len(in)-1].c[0])
	r := len(parts[0].shape)
	if axis < 0 {
		axis += r
	}
	outer := numel(parts[0].shape[:axis])
	shape := append([]int{}, parts[0].shape...)
	shape[axis] = 0
	for _, p := range parts {
		shape[axis] += p.shape[axis]
	}
	var c []float64
	for o := 0; o < outer; o++ {
		for _, p := range parts {
			step := len(p.c) / outer
			c = append(c, p.c[o*step:(o+1)*step]...)
		}
	}
	return &value{shape: shape, c: c}, nil
}

// foldStridedSlice handles rank-1 slices (shape vectors).
func foldStridedSlice(n *Node, in []*value) (*value, error) {
	x := in[0]
	if len(x.shape) != 1 || len(in) != 4 || len(in[1].c) != 1 {
		return nil, fmt.Errorf("constant StridedSlice only on rank-1 tensors")
	}
	for _, m := range []string{"ellipsis_mask", "new_axis_mask"} {
		if n.Attr[m].int() != 0 {
			return nil, fmt.Errorf("%s not supported", m)
		}
	}
	size := x.shape[0]
	begin, end, stride := int(in[1].c[0]), int(in[2].c[0]), int(in[3].c[0])
	if stride == 0 {
		return nil, fmt.Errorf("stride 0")
	}
	norm := func(i int) int {
		if i < 0 {
			i += size
		}
		return i
	}
	begin, end = norm(begin), norm(end)
	if n.Attr["begin_mask"].int()&1 != 0 {
		begin = 0
		if stride < 0 {
			begin = size - 1
		}
	}
	if n.Attr["end_mask"].int()&1 != 0 {
		end = size
		if stride < 0 {
			end = -1
		}
	}
	if n.Attr["shrink_axis_mask"].int()&1 != 0 {
		if begin < 0 || begin >= size {
			return nil, fmt.Errorf("index %d out of range", begin)
		}
		return &value{shape: []int{}, c: []float64{x.c[begin]}}, nil
	}
	var c []float64
	for i := begin; (stride > 0 && i < end && i < size) || (stride < 0 && i > end && i >= 0); i += stride {
		c = append(c, x.c[i])
	}
	return &value{shape: []int{len(c)}, c: c}, nil
}

func foldBinary(f func(a, b float64) float64) folder {
	return func(n *Node, in []*value) (*value, error) {
		a, b := in[0], in[1]
		shape, err := broadcastShape(a.shape, b.shape)
		if err != nil {
			return nil, err
		}
		out := make([]float64, numel(shape))
		idx := make([]int, len(shape))
		at := func(v *value) float64 {
			off, stride := 0, 1
			for i := len(v.shape) - 1; i >= 0; i-- {
				j := i + len(shape) - len(v.shape)
				if v.shape[i] != 1 {
					off += idx[j] * stride
				}
				stride *= v.shape[i]
			}
			return v.c[off]
		}
		for o := range out {
			out[o] = f(at(a), at(b))
			for i := len(shape) - 1; i >= 0; i-- {
				idx[i]++
				if idx[i] < shape[i] {
					break
				}
				idx[i] = 0
			}
		}
		return &value{shape: shape, c: out}, nil
	}
}
