package caddymodule

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"

	"github.com/nats-io/nats.go"
)

// natsProblem names what went wrong with the NATS connection in words an
// operator can act on: authentication, TLS, or reachability.
func natsProblem(err error) string {
	if err == nil {
		return ""
	}
	msg := strings.ToLower(err.Error())
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var certErr *tls.CertificateVerificationError
	var recordErr tls.RecordHeaderError
	var netErr net.Error
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked),
		strings.Contains(msg, "authorization violation"), strings.Contains(msg, "authentication"):
		return "authentication failed: check the cx app's credentials, token, user/password or nkey"
	case errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &certErr), errors.As(err, &recordErr),
		strings.Contains(msg, "tls"), strings.Contains(msg, "x509"), strings.Contains(msg, "certificate"):
		return "TLS failed: check the cx app's tls ca and cert, and that the server speaks TLS"
	case errors.Is(err, nats.ErrNoServers), errors.As(err, &netErr), strings.Contains(msg, "connection refused"):
		return "unreachable: no NATS server answered at the configured addresses"
	}
	return "NATS error"
}
