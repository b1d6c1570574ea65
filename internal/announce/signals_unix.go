//go:build !windows

package announce

import (
	"os"
	"syscall"
)

// DrainSignal switches the announced state to draining; ReadySignal back
// to ready.
var (
	DrainSignal os.Signal = syscall.SIGUSR1
	ReadySignal os.Signal = syscall.SIGUSR2
)

// Signals are the signals Run handles: stop (SIGTERM, SIGINT), drain and
// ready.
func Signals() []os.Signal {
	return []os.Signal{syscall.SIGTERM, os.Interrupt, DrainSignal, ReadySignal}
}
