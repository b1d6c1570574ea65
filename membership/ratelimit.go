package membership

import (
	"time"

	"golang.org/x/time/rate"
)

// Heartbeat rate limit per instance: a misbehaving publisher must not make
// the gateway rebuild its snapshot thousands of times a second. A burst of
// RateBurst messages is allowed (state changes, answers to discovers), then
// at most the larger of RateFloor per second and RateFactor times the
// instance's own heartbeat rate.
const (
	RateBurst  = 20
	RateFloor  = 10.0
	RateFactor = 4.0
)

// evictScanEvery is how long a full registry that found no stale or left
// member to evict waits before scanning again, so that a flood of new ids
// costs O(1) per message.
const evictScanEvery = 100 * time.Millisecond

// bucket is one rate budget: x/time/rate's token bucket on the
// registry's clock (the time of the message), whose rate follows the
// instance's announced interval.
type bucket struct{ lim *rate.Limiter }

// take spends one token, refilled at perSecond, of a RateBurst bucket.
func (b *bucket) take(now time.Time, perSecond float64) bool {
	return b.takeBurst(now, perSecond, RateBurst)
}

// takeBurst spends one token, refilled at perSecond, of a bucket of burst
// tokens (fixed when first taken).
func (b *bucket) takeBurst(now time.Time, perSecond float64, burst int) bool {
	if b.lim == nil {
		b.lim = rate.NewLimiter(rate.Limit(perSecond), burst)
	} else {
		b.lim.SetLimitAt(now, rate.Limit(perSecond))
	}
	return b.lim.AllowN(now, 1)
}

func ratePerSecond(interval time.Duration) float64 {
	if interval <= 0 {
		return RateFloor
	}
	return max(RateFloor, RateFactor*float64(time.Second)/float64(interval))
}

// Plausible seq jumps within one process. Gaps are normal (messages the
// gateway missed while it was disconnected, frozen or slow, answers to
// other gateways' discovers), but a jump far beyond what a publisher can
// send in the time since its last accepted heartbeat would make its own
// next heartbeats look old: it is treated as a second publisher claiming
// the process (an id conflict). SeqSlack is allowed at any moment, plus
// SeqPerSecond for every second of the gateway's clock since the last
// accepted heartbeat: 100 times what the fastest allowed interval sends.
const (
	SeqSlack     = 1000
	SeqPerSecond = 1000
)

// plausibleSeq reports whether seq may follow last after elapsed.
func plausibleSeq(last, seq int64, elapsed time.Duration) bool {
	jump := seq - last
	if jump <= SeqSlack {
		return true
	}
	// Capped so that the product cannot overflow: 2^53 seqs take less.
	secs := min(max(elapsed.Seconds(), 0), float64(1<<53)/SeqPerSecond)
	return float64(jump) <= SeqSlack+secs*SeqPerSecond
}
