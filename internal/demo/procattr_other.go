//go:build !linux

package demo

import "syscall"

// childProcAttr: without Linux's parent-death signal, child gateways are
// stopped by the demo when it ends (and on Ctrl-C).
func childProcAttr() *syscall.SysProcAttr { return nil }
