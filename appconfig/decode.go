package appconfig

import (
	"fmt"
	"slices"
	"strconv"
	"time"
)

// decoder walks the generic TOML tree, converting values to typed fields
// and collecting errors and warnings located by key path and line.
type decoder struct {
	file  string
	lines map[string]int
	errs  []error
	warns []Warning
}

func (d *decoder) fail(path, format string, args ...any) {
	if len(d.errs) >= maxErrors {
		return
	}
	d.errs = append(d.errs, &Error{File: d.file, Line: lineOf(d.lines, path), Key: path,
		Msg: fmt.Sprintf(format, args...), kind: ErrInvalid})
}

func (d *decoder) warn(path, msg string) {
	if len(d.warns) >= maxWarnings {
		return
	}
	d.warns = append(d.warns, Warning{File: d.file, Line: lineOf(d.lines, path), Key: path, Msg: msg})
}

// field handles one key's value; path is the key's full path.
type field func(path string, v any)

// ignored marks a key Fly knows and devgate tolerates without using.
var ignored field = func(string, any) {}

// table dispatches each key of m to its field, in the order the keys appear
// in the file so that errors read top to bottom. Unknown keys are warnings,
// as flyctl ignores them too.
func (d *decoder) table(path string, m map[string]any, fields map[string]field) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		la, lb := d.lines[join(path, a)], d.lines[join(path, b)]
		if la != lb {
			return la - lb
		}
		if a < b {
			return -1
		}
		return 1
	})
	for _, k := range keys {
		p := join(path, k)
		f, ok := fields[k]
		if !ok {
			d.warn(p, "unknown key, ignored")
			continue
		}
		f(p, m[k])
	}
}

func (d *decoder) str(path string, v any) (string, bool) {
	s, ok := v.(string)
	if !ok {
		d.fail(path, "must be a string, got %s", typeName(v))
	}
	return s, ok
}

func (d *decoder) boolean(path string, v any) (bool, bool) {
	b, ok := v.(bool)
	if !ok {
		d.fail(path, "must be true or false, got %s", typeName(v))
	}
	return b, ok
}

// integer accepts a TOML integer in [lo, hi].
func (d *decoder) integer(path string, v any, lo, hi int64) (int, bool) {
	n, ok := v.(int64)
	if !ok {
		d.fail(path, "must be an integer, got %s", typeName(v))
		return 0, false
	}
	if n < lo || n > hi {
		d.fail(path, "must be %d..%d, got %d", lo, hi, n)
		return 0, false
	}
	return int(n), true
}

func (d *decoder) port(path string, v any) (int, bool) { return d.integer(path, v, 1, 65535) }

func (d *decoder) strList(path string, v any) ([]string, bool) {
	arr, ok := v.([]any)
	if !ok {
		d.fail(path, "must be an array of strings, got %s", typeName(v))
		return nil, false
	}
	out := make([]string, 0, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			d.fail(path+"["+strconv.Itoa(i)+"]", "must be a string, got %s", typeName(e))
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

func (d *decoder) tbl(path string, v any) (map[string]any, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		d.fail(path, "must be a table, got %s", typeName(v))
	}
	return m, ok
}

// tables accepts an array of tables, written [[x]] or x = [{...}], and also
// a single [x] table, which flyctl accepts for [[services]] and [[vm]].
func (d *decoder) tables(path string, v any) ([]map[string]any, bool) {
	switch t := v.(type) {
	case []map[string]any:
		return t, true
	case map[string]any:
		return []map[string]any{t}, true
	case []any:
		out := make([]map[string]any, 0, len(t))
		for i, e := range t {
			m, ok := e.(map[string]any)
			if !ok {
				d.fail(path+"["+strconv.Itoa(i)+"]", "must be a table, got %s", typeName(e))
				return nil, false
			}
			out = append(out, m)
		}
		return out, true
	}
	d.fail(path, "must be an array of tables ([[%s]]), got %s", path, typeName(v))
	return nil, false
}

// duration accepts a Go duration string ("5s", "1m30s") or, when unit is not
// zero, an integer count of unit (Fly writes kill_timeout = 5 in seconds and
// old check intervals in milliseconds). The result is in [0, max].
func (d *decoder) duration(path string, v any, unit, max time.Duration) (time.Duration, bool) {
	var dur time.Duration
	switch t := v.(type) {
	case string:
		var err error
		dur, err = time.ParseDuration(t)
		if err != nil {
			d.fail(path, "bad duration %q: use a number and a unit, like \"5s\" or \"1m30s\"", t)
			return 0, false
		}
	case int64:
		if unit == 0 {
			d.fail(path, "must be a duration string like \"5s\", got an integer")
			return 0, false
		}
		if t < 0 || t > int64(max/unit) {
			d.fail(path, "must be 0..%d, got %d", int64(max/unit), t)
			return 0, false
		}
		dur = time.Duration(t) * unit
	default:
		d.fail(path, "must be a duration like \"5s\", got %s", typeName(v))
		return 0, false
	}
	if dur < 0 || dur > max {
		d.fail(path, "must be between 0s and %s, got %s", max, dur)
		return 0, false
	}
	return dur, true
}

// scalarString converts an [env] value as flyctl does: strings as they are,
// numbers and booleans in their TOML spelling.
func (d *decoder) scalarString(path string, v any) (string, bool) {
	switch t := v.(type) {
	case string:
		return t, true
	case int64:
		return strconv.FormatInt(t, 10), true
	case float64:
		return strconv.FormatFloat(t, 'g', -1, 64), true
	case bool:
		return strconv.FormatBool(t), true
	}
	d.fail(path, "must be a string, got %s", typeName(v))
	return "", false
}
