package hostemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// worker is one run of the handler process.
type worker struct {
	cmd    *exec.Cmd
	port   int
	base   string
	ready  atomic.Bool
	exited chan struct{} // closed when the process has exited
	code   int           // exit code, valid after exited
	output sync.WaitGroup

	mu     sync.Mutex
	stderr []string // the last lines, kept as the crash reason
	reason string   // why the emulator killed it, if it did
}

func (w *worker) isReady() bool { return w.ready.Load() }

func (w *worker) hasExited() bool {
	select {
	case <-w.exited:
		return true
	default:
		return false
	}
}

func (w *worker) kill() { killGroup(w.cmd) }

func (w *worker) killFor(reason string) {
	w.mu.Lock()
	w.reason = reason
	w.mu.Unlock()
	killGroup(w.cmd)
}

// stop asks the process to end, then kills it after grace.
func (w *worker) stop(grace time.Duration) {
	terminateGroup(w.cmd)
	select {
	case <-w.exited:
	case <-time.After(grace):
		killGroup(w.cmd)
		<-w.exited
	}
}

func (w *worker) lastStderr() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.Join(w.stderr, "\n")
}

// supervise runs the worker process, restarting it as the host does, until
// the host closes. It reports the first start's outcome on first.
func (h *Host) supervise(first chan<- error) {
	defer h.wg.Done()
	started := false
	for {
		w, err := h.startWorker()
		if err == nil {
			err = h.waitReady(w)
		}
		if !started {
			started = true
			first <- err
			if err != nil {
				if w != nil {
					w.kill()
					<-w.exited
				}
				return
			}
		}
		if w == nil {
			// Could not even start the process: the host gives up as after a crash.
			h.giveUp(fmt.Errorf("hostemu: restart the handler: %w", err))
			return
		}
		if err != nil {
			h.logf("hostemu: %v", err)
			w.kill()
		}
		<-w.exited
		if h.isClosed() {
			return
		}
		w.mu.Lock()
		reason := w.reason
		w.mu.Unlock()
		switch {
		case reason != "":
			h.logf("hostemu: restarting the handler, killed by the host: %s", reason)
		case w.code == 0:
			// Exit 0 is a normal stop: the host does not restart it.
			h.giveUp(errors.New("hostemu: the handler exited with code 0; the host does not restart it"))
			return
		default:
			now := time.Now()
			h.mu.Lock()
			h.crashes = append(h.crashes, now)
			recent := 0
			for _, t := range h.crashes {
				if now.Sub(t) < 30*time.Minute {
					recent++
				}
			}
			h.mu.Unlock()
			h.logf("hostemu: the handler exited with code %d (crash %d within 30 min); stderr:\n%s", w.code, recent, w.lastStderr())
			if recent >= 3 {
				h.giveUp(fmt.Errorf("hostemu: the handler crashed %d times within 30 minutes; the host shuts down (last exit code %d)", recent, w.code))
				return
			}
		}
		h.mu.Lock()
		h.stats.Restarts++
		h.mu.Unlock()
	}
}

func (h *Host) giveUp(err error) {
	h.logf("%v", err)
	h.mu.Lock()
	if h.dead == nil {
		h.dead = err
	}
	h.mu.Unlock()
}

// startWorker starts the handler process on a free port.
func (h *Host) startWorker() (*worker, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(h.exe, h.cfg.Arguments...)
	cmd.Dir = h.workDir
	p := strconv.Itoa(port)
	cmd.Env = append(append([]string(nil), h.opts.Env...),
		"FUNCTIONS_CUSTOMHANDLER_PORT="+p,
		"FUNCTIONS_HTTPWORKER_PORT="+p,
		"AzureWebJobsStorage="+h.opts.StorageConnectionString,
	)
	setGroup(cmd)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	w := &worker{cmd: cmd, port: port, base: "http://127.0.0.1:" + p, exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("hostemu: start %s: %w", h.exe, err)
	}
	h.mu.Lock()
	h.cur = w
	h.mu.Unlock()
	w.output.Add(2)
	go h.pipe(w, stdout, false)
	go h.pipe(w, stderr, true)
	go func() {
		w.output.Wait()
		err := cmd.Wait()
		w.code = 0
		if err != nil {
			w.code = -1
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				w.code = ee.ExitCode()
			}
		}
		close(w.exited)
	}()
	h.logf("hostemu: started %s (pid %d) on port %d", h.cfg.ExecutablePath, cmd.Process.Pid, port)
	return w, nil
}

// pipe forwards the process's output lines to Logf (the host's
// Host.Function.Console category) and keeps the last stderr lines.
func (h *Host) pipe(w *worker, r io.Reader, isStderr bool) {
	defer w.output.Done()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if isStderr {
			w.mu.Lock()
			w.stderr = append(w.stderr, line)
			if len(w.stderr) > 20 {
				w.stderr = w.stderr[1:]
			}
			w.mu.Unlock()
			h.logf("handler[stderr]: %s", line)
		} else {
			h.logf("handler: %s", line)
		}
	}
	_, _ = io.Copy(io.Discard, r)
}

// waitReady probes GET / every 25 ms until any HTTP answer; only socket
// errors mean "not ready" (docs §1.2).
func (h *Host) waitReady(w *worker) error {
	deadline := time.Now().Add(h.opts.StartTimeout)
	ctx, cancel := context.WithDeadline(h.ctx, deadline)
	defer cancel()
	probe := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, w.base+"/", nil)
		resp, err := probe.Do(req)
		if err == nil {
			resp.Body.Close()
			w.ready.Store(true)
			h.logf("hostemu: the handler answered GET / with %d; ready", resp.StatusCode)
			return nil
		}
		select {
		case <-w.exited:
			return fmt.Errorf("hostemu: the handler exited with code %d during start-up; stderr:\n%s", w.code, w.lastStderr())
		case <-ctx.Done():
			if h.ctx.Err() != nil {
				return errors.New("hostemu: closed during start-up")
			}
			return fmt.Errorf("hostemu: the handler did not answer GET / on port %d within %s", w.port, h.opts.StartTimeout)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
