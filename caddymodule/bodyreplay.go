package caddymodule

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"reflect"
	"sync/atomic"
)

// A request body may go to another instance only if that instance gets all
// of it. reverse_proxy replays a body whole only when request_buffers held
// all of it: it then hands each try a fresh reader over the buffer. Any
// other body (larger than the buffer, or not buffered at all) is one stream
// that every try shares, so a retry after a try read from it would deliver
// what is left: nothing, or the tail. The cx transport therefore wraps such
// a stream for each try to learn whether that try read from it, and the cx
// policies (and, as a backstop, the transport) refuse to send it again once
// it was read. A try that never read it (a refused dial; rarely a 503 that
// came back before Go's transport started on the body) may still be
// retried, with the whole stream.

// outcomeBodySpent is the outcome of a try the cx transport refused to send
// because an earlier try of the request already read its body stream.
const outcomeBodySpent = "body_spent"

// errBodySpent is the error of a try refused because an earlier try of the
// request read from its body, which was not buffered whole.
var errBodySpent = errors.New("request body was already sent to an instance and was not buffered whole, so it cannot be replayed on another: raise request_buffers above the largest body that should be replayed")

// errBodyTaken is what an earlier try's body read gives once a later try
// was allowed to send the body instead.
var errBodyTaken = errors.New("request body was handed to a later try")

// States of an attemptBody.
const (
	bodyUnread int32 = iota // no Read yet: the stream is whole
	bodyRead                // Read was called: the stream may be consumed
	bodySealed              // a later try owns the stream: Read fails
)

// attemptBody is one try's view of the request body. Go's transport reads
// and closes it from its own goroutines, possibly after RoundTrip returned,
// hence the atomic state.
type attemptBody struct {
	io.ReadCloser // the body reverse_proxy handed this try
	state         atomic.Int32
}

// take notes that the stream is being consumed; false if a later try has
// taken it over, in which case nothing may be read from it.
func (b *attemptBody) take() bool {
	return b.state.Load() == bodyRead || b.state.CompareAndSwap(bodyUnread, bodyRead)
}

func (b *attemptBody) Read(p []byte) (int, error) {
	if !b.take() {
		return 0, errBodyTaken
	}
	return b.ReadCloser.Read(p)
}

// Close closes the stream only if this try read from it: Go's transport
// closes the body of a request it could not send, which must not end a
// stream that a retry may still send whole.
func (b *attemptBody) Close() error {
	if b.state.Load() != bodyRead {
		return nil
	}
	return b.ReadCloser.Close()
}

// seal hands the stream over to a later try if this try never read from
// it, and reports whether the later try may send it.
func (b *attemptBody) seal() bool {
	return b.state.CompareAndSwap(bodyUnread, bodySealed) || b.state.Load() == bodySealed
}

// bodyTries is what the cx transport saw of the body of a request's
// latest try (part of proxyRequest).
type bodyTries struct {
	// body is the body object the latest try sent.
	body io.ReadCloser
	// watch, if set, notes whether that try read from body.
	watch *attemptBody
}

// mayResend reports whether a try may send body, given the body of the
// request's latest try: always if it is a different body (a fresh reader
// over a whole buffer), and for the same stream only if no try read from
// it, in which case the earlier try can no longer read from it. The same
// unwatched buffer reader again (reverse_proxy never does this) counts as
// read.
func (t *bodyTries) mayResend(body io.ReadCloser) bool {
	if t == nil || t.body == nil || body == nil || body == http.NoBody || !sameBody(t.body, body) {
		return true
	}
	return t.watch != nil && t.watch.seal()
}

// sameBody reports whether a and b may be the same body object. Only
// values of one comparable dynamic type are compared; a value that cannot
// be compared counts as the same, so that doubt never leads to a replay.
func sameBody(a, b io.ReadCloser) (same bool) {
	ta := reflect.TypeOf(a)
	if ta != reflect.TypeOf(b) {
		return false
	}
	if !ta.Comparable() {
		return true
	}
	// A comparable struct may still hold an incomparable value in an
	// interface field; comparing it panics.
	defer func() {
		if recover() != nil {
			same = true
		}
	}()
	return a == b
}

// bodyForTry returns the body to send for this try of req: nil to send
// req.Body as it is (none, or a reader over a whole buffer, which a retry
// gets afresh), or req.Body wrapped to note reads. It fails with
// errBodySpent, without any dial, if an earlier try read from the same
// stream. Only a request with a body needs a state for this: st may be
// nil, and the returned state is st or the one made for the body.
func bodyForTry(req *http.Request, st *proxyRequest) (*attemptBody, *proxyRequest, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, st, nil
	}
	if st == nil {
		st = requestOf(req)
	}
	bt := &st.body
	if !bt.mayResend(req.Body) {
		return nil, st, errBodySpent
	}
	bt.body, bt.watch = req.Body, nil
	// Go's transport sends a known in-memory body with the headers in one
	// write; wrapped, it would flush the headers first.
	if inMemory(req.Body) {
		return nil, st, nil
	}
	bt.watch = &attemptBody{ReadCloser: req.Body}
	return bt.watch, st, nil
}

// nopCloserWriterTo is the type of io.NopCloser(bytes.NewReader(buf)), the
// body reverse_proxy gives each try of a request it buffered whole.
var nopCloserWriterTo = reflect.TypeOf(io.NopCloser(bytes.NewReader(nil)))

// inMemory reports whether body is a reader over a buffer: reading it
// cannot cut a stream, and a retry is given a fresh one.
func inMemory(body io.ReadCloser) bool {
	if reflect.TypeOf(body) != nopCloserWriterTo {
		return false
	}
	_, ok := reflect.ValueOf(body).Field(0).Interface().(*bytes.Reader)
	return ok
}
