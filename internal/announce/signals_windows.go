//go:build windows

package announce

import "os"

// DrainSignal and ReadySignal do not exist on Windows.
var (
	DrainSignal os.Signal
	ReadySignal os.Signal
)

// Signals are the signals Run handles: stop (interrupt).
func Signals() []os.Signal { return []os.Signal{os.Interrupt} }
