package demo

import "syscall"

// childProcAttr makes the kernel kill a child gateway when the demo dies,
// even by SIGKILL, so that no gateway outlives it.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
