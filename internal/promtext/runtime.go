package promtext

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// RegisterRuntime adds the Go runtime and process metrics under the names
// the Prometheus client uses: go_goroutines, go_threads, go_info,
// go_memstats_{alloc,heap_alloc,heap_inuse,sys}_bytes, go_gc_cycles_total,
// process_{cpu_seconds_total,resident_memory_bytes,virtual_memory_bytes,
// open_fds,max_fds,start_time_seconds} (the process ones from /proc/self on
// Linux; absent elsewhere).
func (r *Registry) RegisterRuntime() {
	var mu sync.Mutex
	var ms runtime.MemStats
	var at time.Time
	mem := func(f func(*runtime.MemStats) float64) func() float64 {
		return func() float64 {
			mu.Lock()
			defer mu.Unlock()
			if time.Since(at) > time.Second { // one ReadMemStats per scrape
				runtime.ReadMemStats(&ms)
				at = time.Now()
			}
			return f(&ms)
		}
	}
	r.GaugeFunc("go_goroutines", "Number of goroutines that currently exist.", func() float64 { return float64(runtime.NumGoroutine()) })
	r.GaugeFunc("go_threads", "Number of OS threads created.", func() float64 { n, _ := runtime.ThreadCreateProfile(nil); return float64(n) })
	r.add("go_info", funcMetric{"Information about the Go environment.", "gauge", func() float64 { return 1 }}.withLabel("version", runtime.Version()))
	r.GaugeFunc("go_memstats_alloc_bytes", "Number of bytes allocated in heap and currently in use.", mem(func(m *runtime.MemStats) float64 { return float64(m.Alloc) }))
	r.GaugeFunc("go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and currently in use.", mem(func(m *runtime.MemStats) float64 { return float64(m.HeapAlloc) }))
	r.GaugeFunc("go_memstats_heap_inuse_bytes", "Number of heap bytes that are in use.", mem(func(m *runtime.MemStats) float64 { return float64(m.HeapInuse) }))
	r.GaugeFunc("go_memstats_sys_bytes", "Number of bytes obtained from system.", mem(func(m *runtime.MemStats) float64 { return float64(m.Sys) }))
	r.CounterFunc("go_gc_cycles_total", "Completed GC cycles.", mem(func(m *runtime.MemStats) float64 { return float64(m.NumGC) }))
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		return
	}
	start := processStart()
	r.CounterFunc("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", func() float64 { return (statField(11) + statField(12)) / 100 })
	r.GaugeFunc("process_resident_memory_bytes", "Resident memory size in bytes.", func() float64 { return statmField(1) * float64(os.Getpagesize()) })
	r.GaugeFunc("process_virtual_memory_bytes", "Virtual memory size in bytes.", func() float64 { return statmField(0) * float64(os.Getpagesize()) })
	r.GaugeFunc("process_open_fds", "Number of open file descriptors.", func() float64 {
		d, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			return 0
		}
		return float64(len(d))
	})
	r.GaugeFunc("process_max_fds", "Maximum number of open file descriptors.", func() float64 {
		var l syscall.Rlimit
		if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
			return 0
		}
		return float64(l.Cur)
	})
	r.GaugeFunc("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", func() float64 { return start })
}

// withLabel exposes a constant-labelled sample.
func (m funcMetric) withLabel(name, v string) family { return labelled{m, labelPair(name, v)} }

// statFields are /proc/self/stat's fields after the command name (field 3
// onwards, so index 0 is the state).
func statFields() []string {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return nil
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 {
		s = s[i+1:]
	}
	return strings.Fields(s)
}

// statField is field 3+i of /proc/self/stat (utime, field 14, is i = 11;
// stime i = 12; both in clock ticks of 1/100 s).
func statField(i int) float64 {
	f := statFields()
	if i >= len(f) {
		return 0
	}
	v, _ := strconv.ParseFloat(f[i], 64)
	return v
}

func statmField(i int) float64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if i >= len(f) {
		return 0
	}
	v, _ := strconv.ParseFloat(f[i], 64)
	return v
}

// processStart is the process start time: boot time plus the start ticks
// (field 22, index 19) at USER_HZ = 100.
func processStart() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	var btime float64
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "btime "); ok {
			btime, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return btime + statField(19)/100
}

type labelled struct {
	m     funcMetric
	label string
}

func (l labelled) write(w *bufio.Writer, name string) {
	header(w, name, l.m.help, l.m.typ)
	fmt.Fprintf(w, "%s{%s} %s\n", name, l.label, value(l.m.f()))
}
