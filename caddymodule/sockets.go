package caddymodule

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// scanOwnSockets enables reading this process's listening TCP sockets from
// /proc (Linux), so that every listener of the gateway process is known
// to the guard, not only those its config names (a plugin's, a debug
// server's). Tests that run instances inside the test process turn it off.
var scanOwnSockets atomic.Bool

func init() { scanOwnSockets.Store(runtime.GOOS == "linux") }

// socketScanEvery bounds how often /proc is read: listeners change only
// with a config load, and a dial within a second of one is also checked
// against the config's listeners.
const socketScanEvery = time.Second

// ownSockets is the latest scan of this process's listening sockets.
var ownSockets socketScanner

type socketScanner struct {
	mu   sync.Mutex // held by the one goroutine refreshing
	last atomic.Pointer[socketSnapshot]
}

// socketSnapshot is what the process listened on at one moment.
type socketSnapshot struct {
	at    time.Time
	addrs map[netip.AddrPort]bool // exact listen addresses
	any   map[int]bool            // ports listened on every address
	local map[netip.Addr]bool     // this machine's addresses
}

// owns reports whether ip:port is a listening socket of this process
// (directly or through a listener on every address). The first scan is
// made on the spot; later ones, at most every socketScanEvery, in the
// background, so that no dial waits on /proc (a listener added by a
// reload is known from the config at once, see loopGuard).
func (s *socketScanner) owns(ip netip.Addr, port int) bool {
	if !scanOwnSockets.Load() {
		return false
	}
	snap := s.last.Load()
	switch {
	case snap == nil:
		s.mu.Lock()
		if snap = s.last.Load(); snap == nil {
			snap = scanSockets()
			s.last.Store(snap)
		}
		s.mu.Unlock()
	case time.Since(snap.at) > socketScanEvery && s.mu.TryLock():
		go func() {
			defer s.mu.Unlock()
			s.last.Store(scanSockets())
		}()
	}
	return snap.owns(ip, port)
}

func (snap *socketSnapshot) owns(ip netip.Addr, port int) bool {
	ip = ip.Unmap().WithZone("")
	if snap.addrs[netip.AddrPortFrom(ip, uint16(port))] {
		return true
	}
	return snap.any[port] && (ip.IsLoopback() || ip.IsUnspecified() || snap.local[ip])
}

// scanSockets reads the listening TCP sockets of the network namespace
// from /proc/net/tcp{,6} and keeps those whose inode is one of this
// process's file descriptors. Where /proc is unreadable it knows none.
func scanSockets() *socketSnapshot {
	snap := &socketSnapshot{at: time.Now(), addrs: map[netip.AddrPort]bool{}, any: map[int]bool{}}
	inodes := ownSocketInodes()
	if len(inodes) == 0 {
		return snap
	}
	snap.local = localAddrs()
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		readListening(file, func(ap netip.AddrPort, inode string) {
			if !inodes[inode] {
				return
			}
			if ap.Addr().IsUnspecified() {
				snap.any[int(ap.Port())] = true
			} else {
				snap.addrs[ap] = true
			}
		})
	}
	return snap
}

// ownSocketInodes returns the inodes of this process's sockets.
func ownSocketInodes() map[string]bool {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	out := map[string]bool{}
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if inode, ok := strings.CutPrefix(target, "socket:["); err == nil && ok {
			out[strings.TrimSuffix(inode, "]")] = true
		}
	}
	return out
}

// tcpListen is the state of a listening socket in /proc/net/tcp.
const tcpListen = "0A"

// readListening calls fn with the address and inode of every listening
// socket in a /proc/net/tcp-format file.
func readListening(file string, fn func(netip.AddrPort, string)) {
	f, err := os.Open(file)
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || fields[3] != tcpListen {
			continue
		}
		if ap, ok := parseProcAddr(fields[1]); ok {
			fn(ap, fields[9])
		}
	}
}

// parseProcAddr parses "0100007F:1F90": the address as 32-bit words in
// hex, each in host byte order, and the port in hex.
func parseProcAddr(s string) (netip.AddrPort, bool) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if !ok || err != nil {
		return netip.AddrPort{}, false
	}
	raw, err := hex.DecodeString(hexAddr)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, false
	}
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(b[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), true
}
