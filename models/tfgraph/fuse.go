package tfgraph

import "strings"

// Patterns that TF spells out op by op and OpenCV runs better as one layer. They are tried on a node before its inputs are converted, so the
// replaced chain is never written.
var fusions []func(b *builder, n *Node) (*value, bool, error)

func init() { fusions = append(fusions, fusePrelu, fuseMaxMinPrelu) }

// producer returns the node behind input i of n, or nil.
func (b *builder) producer(n *Node, i int) *Node {
	if n == nil || i >= len(n.Input) || strings.HasPrefix(n.Input[i], "^") || key(n.Input[i]) != nodeName(n.Input[i]) {
		return nil
	}
	return b.nodes[nodeName(n.Input[i])]
}

// internal reports whether node name feeds only consumer c (and is no graph
// output), so replacing c makes it dead.
func (b *builder) internal(name string, c *Node) bool {
	return b.soleConsumer(name) == c
}

// fusePrelu recognises PReLU as TF-Slim's MobileFaceNet writes it,
//
//	Add(Relu(x), Mul(Sub(x, Abs(x)), c))  ->  PRelu(x, 2c)
//	Add(x, Mul(Sub(x, Abs(x)), c))        ->  PRelu(x, 1+2c)
//
// with c a constant per channel (the Mul may take c first). The first form
// is exact in float32: for x < 0, (x-|x|)*c = (2x)*c = x*(2c). The second
// (the depthwise layers, whose x is already a fused Relu, so x >= 0 and the
// term is zero) equals x + 2c*min(x,0) within one rounding.
func fusePrelu(b *builder, n *Node) (*value, bool, error) {
	if (n.Op != "Add" && n.Op != "AddV2") || len(n.Input) != 2 {
		return nil, false, nil
	}
	for side := 0; side < 2; side++ {
		mul := b.producer(n, 1-side)
		if mul == nil || mul.Op != "Mul" || len(mul.Input) != 2 || !b.internal(mul.Name, n) {
			continue
		}
		var sub, cn *Node
		for i := 0; i < 2; i++ {
			p := b.producer(mul, i)
			if p != nil && p.Op == "Sub" {
				sub, cn = p, b.producer(mul, 1-i)
			}
		}
		if sub == nil || cn == nil || cn.Op != "Const" || len(sub.Input) != 2 || !b.internal(sub.Name, mul) {
			continue
		}
		abs := b.producer(sub, 1)
		x := b.producer(sub, 0)
		if abs == nil || x == nil || abs.Op != "Abs" || !b.internal(abs.Name, sub) || b.producer(abs, 0) != x {
			continue
		}
		first := b.producer(n, side)
		relu := false
		switch {
		case first == x:
		case first != nil && first.Op == "Relu" && b.producer(first, 0) == x && b.internal(first.Name, n):
			relu = true
		default:
			continue
		}
		xv, err := b.eval(x.Name)
		if err != nil {
			return nil, true, err
		}
		cv, err := b.eval(cn.Name)
		if err != nil {
			return nil, true, err
		}
		ch := xv.shape[len(xv.shape)-1]
		s, ok := perChannel(cv, ch)
		if !ok || xv.isConst() {
			continue
		}
		slope := make([]float64, ch)
		for i, c := range s {
			// float32 arithmetic, as TF: 2c is exact, 1+2c rounds once.
			slope[i] = float64(2 * float32(c))
			if !relu {
				slope[i] = float64(1 + 2*float32(c))
			}
		}
		y, err := b.activate(xv.name, activation{kind: "Prelu", alpha: &value{shape: []int{ch}, c: slope}}, xv)
		if err != nil {
			return nil, true, err
		}
		return &value{shape: xv.shape, nchw: xv.nchw, name: y}, true, nil
	}
	return nil, false, nil
}

// fuseMaxMinPrelu recognises PReLU as MXNet exports write it,
//
//	Add(Maximum(x, 0), Mul(g, Minimum(x, 0)))  ->  PRelu(x, g)
//
// (operands in either order, g a constant per channel): exact, since for
// x < 0 it is 0 + g*x and for x >= 0 it is x + g*0.
func fuseMaxMinPrelu(b *builder, n *Node) (*value, bool, error) {
	if (n.Op != "Add" && n.Op != "AddV2") || len(n.Input) != 2 {
		return nil, false, nil
	}
	// zeroArg returns the non-constant input of a Maximum/Minimum against a
	// constant zero scalar.
	zeroArg := func(m *Node, op string) *Node {
		if m == nil || m.Op != op || len(m.Input) != 2 {
			return nil
		}
		for i := 0; i < 2; i++ {
			c, x := b.producer(m, i), b.producer(m, 1-i)
			if c == nil || x == nil || c.Op != "Const" || x.Op == "Const" {
				continue
			}
			cv, err := b.eval(c.Name)
			if err != nil || len(cv.c) != 1 || cv.c[0] != 0 {
				return nil
			}
			return x
		}
		return nil
	}
	for side := 0; side < 2; side++ {
		mx, mul := b.producer(n, side), b.producer(n, 1-side)
		x := zeroArg(mx, "Maximum")
		if x == nil || mul == nil || mul.Op != "Mul" || len(mul.Input) != 2 || !b.internal(mx.Name, n) || !b.internal(mul.Name, n) {
			continue
		}
		var g *Node
		for i := 0; i < 2; i++ {
			mn, c := b.producer(mul, i), b.producer(mul, 1-i)
			if zeroArg(mn, "Minimum") == x && c != nil && c.Op == "Const" && b.internal(mn.Name, mul) {
				g = c
			}
		}
		if g == nil {
			continue
		}
		xv, err := b.eval(x.Name)
		if err != nil {
			return nil, true, err
		}
		gv, err := b.eval(g.Name)
		if err != nil {
			return nil, true, err
		}
		ch := xv.shape[len(xv.shape)-1]
		if _, ok := perChannel(gv, ch); !ok || xv.isConst() {
			continue
		}
		y, err := b.activate(xv.name, activation{kind: "Prelu", alpha: gv}, xv)
		if err != nil {
			return nil, true, err
		}
		return &value{shape: xv.shape, nchw: xv.nchw, name: y}, true, nil
	}
	return nil, false, nil
}
