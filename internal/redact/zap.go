package redact

import (
	"fmt"

	"go.uber.org/zap/zapcore"
)

// Core is a zapcore.Core that redacts every message and every string,
// error and Stringer field before passing the entry on, so that no line
// written through it can carry a URL's user info.
type Core struct{ Next zapcore.Core }

// NewCore returns next with every entry redacted.
func NewCore(next zapcore.Core) zapcore.Core {
	if _, ok := next.(Core); ok {
		return next
	}
	return Core{Next: next}
}

// Enabled implements zapcore.LevelEnabler.
func (c Core) Enabled(l zapcore.Level) bool { return c.Next.Enabled(l) }

// With implements zapcore.Core.
func (c Core) With(fields []zapcore.Field) zapcore.Core {
	return Core{Next: c.Next.With(Fields(fields))}
}

// Check implements zapcore.Core: the entry is written through c, not
// through the core it wraps.
func (c Core) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

// Write implements zapcore.Core.
func (c Core) Write(e zapcore.Entry, fields []zapcore.Field) error {
	e.Message = String(e.Message)
	return c.Next.Write(e, Fields(fields))
}

// Sync implements zapcore.Core.
func (c Core) Sync() error { return c.Next.Sync() }

// Fields returns fields with their strings, errors and Stringers
// redacted; other kinds pass as they are.
func Fields(fields []zapcore.Field) []zapcore.Field {
	out := make([]zapcore.Field, len(fields))
	for i, f := range fields {
		out[i] = field(f)
	}
	return out
}

func field(f zapcore.Field) zapcore.Field {
	switch f.Type {
	case zapcore.StringType:
		f.String = String(f.String)
	case zapcore.ErrorType:
		if err, ok := f.Interface.(error); ok {
			return zapcore.Field{Key: f.Key, Type: zapcore.StringType, String: Error(err)}
		}
	case zapcore.StringerType:
		if s, ok := f.Interface.(fmt.Stringer); ok {
			return zapcore.Field{Key: f.Key, Type: zapcore.StringType, String: String(s.String())}
		}
	case zapcore.ReflectType:
		return zapcore.Field{Key: f.Key, Type: zapcore.StringType, String: String(fmt.Sprint(f.Interface))}
	}
	return f
}

var _ zapcore.Core = Core{}
