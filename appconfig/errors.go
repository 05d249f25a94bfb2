package appconfig

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors; every error from Parse wraps one of them.
var (
	// ErrSyntax: the file is not valid TOML.
	ErrSyntax = errors.New("invalid TOML")
	// ErrInvalid: the file is TOML but a key has a bad value.
	ErrInvalid = errors.New("invalid fly.toml")
	// ErrTooLarge: the file is over MaxFileSize.
	ErrTooLarge = errors.New("fly.toml too large")
)

// MaxFileSize bounds the input: fly.toml files arrive over the API, and a
// real one is a few kilobytes.
const MaxFileSize = 1 << 20

// maxErrors and maxWarnings bound what one Parse reports, so that a garbage
// file yields a readable answer rather than thousands of lines.
const (
	maxErrors   = 20
	maxWarnings = 100
)

// Error is one problem in a fly.toml, located by file, line and key.
type Error struct {
	File string
	Line int    // 1-based; 0 when unknown
	Key  string // e.g. "services[0].ports[1].port"; "" for syntax errors
	Msg  string
	kind error
}

func (e *Error) Error() string { return location(e.File, e.Line, e.Key) + e.Msg }

// Unwrap returns ErrSyntax, ErrInvalid or ErrTooLarge.
func (e *Error) Unwrap() error { return e.kind }

// Warning is a tolerated oddity, usually an unknown key that is ignored.
type Warning struct {
	File string
	Line int
	Key  string
	Msg  string
}

func (w Warning) String() string { return location(w.File, w.Line, w.Key) + w.Msg }

func location(file string, line int, key string) string {
	s := file
	switch {
	case line > 0 && file != "":
		s = fmt.Sprintf("%s:%d", file, line)
	case line > 0:
		s = fmt.Sprintf("line %d", line)
	}
	if s != "" {
		s += ": "
	}
	if key != "" {
		s += key + ": "
	}
	return s
}

// typeName names a decoded TOML value's type for messages.
func typeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case map[string]any:
		return "a table"
	case []map[string]any, []any:
		return "an array"
	case time.Time:
		return "a datetime"
	default:
		return fmt.Sprintf("%T", v)
	}
}
