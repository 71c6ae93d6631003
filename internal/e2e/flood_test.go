package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestListenerFlood floods the metrics port and the TCP trigger port of the
// real daemon on loopback (run with the unit's LimitNOFILE=4096) with
// 4,100 connections that are idle after a kept-alive request or send their
// headers a byte at a time (slowloris), reconnecting whenever the agent
// closes one, and sends card-insert triggers over the unix socket and the
// TCP port during the flood: each must be accepted at once and commit its
// visit. Before the listeners had timeouts and caps, the flood took every
// file descriptor and the triggers timed out.
func TestListenerFlood(t *testing.T) {
	skipShort(t)
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) not installed")
	}
	dir := t.TempDir()
	frames := filepath.Join(dir, "frames")
	writeFrames(t, frames, 4)
	ports := freePorts(t, 2)
	port, trig := ports[0], fmt.Sprintf("127.0.0.1:%d", ports[1])
	sock, tokFile, token := filepath.Join(dir, "trigger.sock"), filepath.Join(dir, "token"), "flood-test-token-0123456789"
	os.WriteFile(tokFile, []byte(token), 0o600)
	cfg := baseConfig(modelsDir(t), filepath.Join(dir, "agent.db"), port) + fmt.Sprintf(`camera:
  source: %s
  kind: images
  loop: true
  burst_frames: 3
  burst_duration: 100ms
trigger:
  http:
    enabled: true
    socket: %s
    listen: %s
    token_file: %s
`, frames, sock, trig, tokFile)
	cfgFile := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfgFile, []byte(cfg), 0o644)

	// prlimit execs the agent: same pid.
	p := startProg(t, prlimit, "--nofile=4096", "--", agentBin, "run", "--config", cfgFile)
	waitFor(t, 60*time.Second, "agent ready", func() bool {
		_, code, err := healthz(port)
		return err == nil && code == 200 && strings.Contains(p.log.String(), "trigger endpoint listening")
	})
	pid := p.cmd.Process.Pid
	fds := func() int {
		e, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		return len(e)
	}

	unixc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	tcpc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	type result struct {
		via          string
		post, commit time.Duration
		err          error
	}
	// trigger sends one card insert and waits for its visit in the log.
	trigger := func(via string) result {
		r := result{via: via}
		c, base := unixc, "http://agent"
		if via == "tcp" {
			c, base = tcpc, "http://"+trig
		}
		t0 := time.Now()
		resp, err := c.Do(visitReq(base, token))
		r.post = time.Since(t0)
		if err != nil {
			r.err = fmt.Errorf("POST: %w", err)
			return r
		}
		var body struct{ ID string }
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted || body.ID == "" {
			r.err = fmt.Errorf("POST: status %d id %q", resp.StatusCode, body.ID)
			return r
		}
		for deadline := t0.Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if strings.Contains(p.log.String(), "visit="+body.ID+" ") {
				r.commit = time.Since(t0)
				return r
			}
			if time.Now().After(deadline) {
				r.err = fmt.Errorf("visit %s not committed within 20 s", body.ID)
				return r
			}
		}
	}
	round := func(n int) []result {
		var rs []result
		for i := range n {
			rs = append(rs, trigger([]string{"unix", "tcp"}[i%2]))
			time.Sleep(300 * time.Millisecond)
		}
		return rs
	}
	summary := func(rs []result) string {
		var post, commit []time.Duration
		failed := 0
		for _, r := range rs {
			if r.err != nil {
				failed++
				continue
			}
			post, commit = append(post, r.post), append(commit, r.commit)
		}
		slices.Sort(post)
		slices.Sort(commit)
		if len(post) == 0 {
			return fmt.Sprintf("%d of %d triggers failed", failed, len(rs))
		}
		ms := func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/1e6) }
		return fmt.Sprintf("%d triggers, %d failed; POST median %s max %s; trigger->commit median %s max %s",
			len(rs), failed, ms(post[len(post)/2]), ms(post[len(post)-1]), ms(commit[len(commit)/2]), ms(commit[len(commit)-1]))
	}

	base := round(4)
	t.Logf("before the flood: %s; agent fds %d", summary(base), fds())

	// The flood: slots that reconnect (after 1 s) whenever the agent closes them.
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var dials, refused atomic.Int64
	slot := func(addr, kind string) {
		defer wg.Done()
		for ctx.Err() == nil {
			c, err := (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "tcp", addr)
			dials.Add(1)
			if err != nil {
				refused.Add(1)
			} else {
				unhook := context.AfterFunc(ctx, func() { c.Close() })
				switch kind {
				case "keepalive": // one request (a 401 at the trigger port), then idle
					fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
					if r, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
						io.Copy(io.Discard, r.Body)
						io.Copy(io.Discard, c) // until the agent closes it
					}
				case "slowloris": // headers one line per second, never finished
					fmt.Fprintf(c, "POST /v1/visit HTTP/1.1\r\nHost: x\r\n")
					for i := 0; ctx.Err() == nil; i++ {
						if _, err := fmt.Fprintf(c, "X-%d: y\r\n", i); err != nil {
							break
						}
						time.Sleep(time.Second)
					}
				}
				unhook()
				c.Close()
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", port)
	plan := []struct {
		addr, kind string
		n          int
	}{{metricsAddr, "keepalive", 2600}, {metricsAddr, "slowloris", 400}, {trig, "keepalive", 800}, {trig, "slowloris", 300}}
	total := 0
	for _, f := range plan {
		for range f.n {
			wg.Add(1)
			go slot(f.addr, f.kind)
		}
		total += f.n
	}
	defer func() { stop(); wg.Wait() }()
	var maxFDs atomic.Int64
	go func() {
		for ctx.Err() == nil {
			if n := int64(fds()); n > maxFDs.Load() {
				maxFDs.Store(n)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	time.Sleep(5 * time.Second) // let the flood build up
	flooded := round(8)
	_, hcode, herr := healthz(port)
	t.Logf("during a flood of %d connections (%d dials, %d failed): %s; agent fds max %d; /healthz during the flood: %d %v",
		total, dials.Load(), refused.Load(), summary(flooded), maxFDs.Load(), hcode, herr)
	stop()
	wg.Wait()

	for _, r := range flooded {
		if r.err != nil {
			t.Errorf("trigger via %s during the flood: %v (POST %v)", r.via, r.err, r.post.Round(time.Millisecond))
		} else if r.post > 2*time.Second {
			t.Errorf("trigger via %s during the flood: POST took %v", r.via, r.post.Round(time.Millisecond))
		}
	}
	if n := maxFDs.Load(); n > 512 {
		t.Errorf("agent had %d open file descriptors during the flood (LimitNOFILE 4096): the listeners are not capped", n)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err, ok := p.wait(10 * time.Second); !ok {
		t.Fatal("agent still running 10 s after SIGTERM")
	} else if err != nil {
		t.Errorf("exit after SIGTERM: %v\n%s", err, tail(p.log.String(), 10))
	}
}
