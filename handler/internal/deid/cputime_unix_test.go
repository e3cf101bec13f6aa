//go:build unix

package deid

import (
	"syscall"
	"time"
)

// processCPU is the CPU time this process has used (user + system, all
// threads), so that a benchmark on a shared machine can report throughput
// per CPU second as well as per wall second.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
