package identity

import "testing"

func BenchmarkScanSketch(b *testing.B) {
	const n = 100000
	sk := make([]uint64, n*sketchWords)
	for i := range sk {
		sk[i] = uint64(i) * 0x9e3779b97f4a7c15
	}
	var q [sketchWords]uint64
	var out []int32
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out = scanSketch(sk, &q, 0, n, 100, out[:0])
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/member")
}
