// Package testproc holds what the tests that run built binaries as processes
// (tests/e2e, tests/hostemu) need to place and wait for them.
package testproc

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"time"
)

// FreeAddr returns a loopback address with a port nobody listens on now.
func FreeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// WaitReady waits up to 20 s until url answers 200 (the handler answers 503
// while it is still starting).
func WaitReady(url string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer 200 in 20s", url)
}

// RandomSuffix returns 8 hex digits for names that must not collide between
// tests sharing one Azurite (tables, queues, containers).
func RandomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
