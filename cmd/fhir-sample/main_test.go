package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantAddr string
		wantErr  bool
	}{
		{"defaults to loopback", []string{"-data", "d"}, "127.0.0.1:8080", false},
		{"explicit address", []string{"-data", "d", "-addr", "127.0.0.1:0"}, "127.0.0.1:0", false},
		{"data is required", []string{"-addr", "127.0.0.1:0"}, "", true},
		{"stray argument", []string{"-data", "d", "extra"}, "", true},
		{"unknown flag", []string{"-data", "d", "-fail-rate", "0.1"}, "", true},
		{"search delay", []string{"-data", "d", "-search-delay", "200ms"}, "127.0.0.1:8080", false},
		{"negative search delay", []string{"-data", "d", "-search-delay", "-1s"}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseFlags(tt.args)
			if (err != nil) != tt.wantErr || (err == nil && cfg.addr != tt.wantAddr) {
				t.Errorf("got %+v, %v; want addr %q, error %v", cfg, err, tt.wantAddr, tt.wantErr)
			}
		})
	}
}

func TestBaseURL(t *testing.T) {
	tests := []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}, "http://127.0.0.1:8080/fhir"},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 80}, "http://localhost:80/fhir"},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 9000}, "http://[::1]:9000/fhir"},
	}
	for _, tt := range tests {
		t.Run(tt.addr.String(), func(t *testing.T) {
			if got := baseURL(tt.addr, "/fhir"); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for the logger and the test to share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestRunLogsBaseURLAndServes(t *testing.T) {
	var out syncBuffer
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, config{dataDir: "../../tests/data/synthea-r4-10", addr: "127.0.0.1:0", basePath: "/fhir"},
			slog.New(slog.NewJSONHandler(&out, nil)))
	}()
	var line struct {
		Msg       string `json:"msg"`
		BaseURL   string `json:"base_url"`
		Resources int    `json:"resources"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for line.BaseURL == "" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		if first, _, ok := strings.Cut(out.String(), "\n"); ok {
			if err := json.Unmarshal([]byte(first), &line); err != nil {
				t.Fatalf("log line %q is not JSON: %v", first, err)
			}
		}
	}
	if line.Msg != "listening" || !strings.HasPrefix(line.BaseURL, "http://127.0.0.1:") || line.Resources != 4142 {
		t.Fatalf("log line %+v", line)
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, line.BaseURL+"/metadata", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET metadata: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("metadata status %d", resp.StatusCode)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}
