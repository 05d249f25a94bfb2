package machines

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseStat(t *testing.T) {
	for name, tc := range map[string]struct {
		in      string
		pgrp    int
		start   uint64
		wantErr bool
	}{
		"plain":         {in: "42 (sleep) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10", pgrp: 42, start: 123456},
		"paren in name": {in: "7 (a) b) (c) R 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0", pgrp: 9, start: 99},
		"no name":       {in: "7 a R 1 9", wantErr: true},
		"short":         {in: "7 (a) R 1 9 9", wantErr: true},
		"bad start":     {in: "7 (a) R 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 x 0 0", wantErr: true},
	} {
		pgrp, start, err := parseStat([]byte(tc.in))
		if (err != nil) != tc.wantErr || pgrp != tc.pgrp || start != tc.start {
			t.Errorf("%s: got %d %d %v", name, pgrp, start, err)
		}
	}
	// And the real thing.
	pgrp, start, err := procStat(os.Getpid())
	if err != nil || pgrp <= 0 || start == 0 {
		t.Errorf("procStat(self) = %d %d %v", pgrp, start, err)
	}
}

func TestParsePidFile(t *testing.T) {
	for in, ok := range map[string]bool{
		"123 456\n": true,
		"123 456":   true,
		"1 456\n":   false, // never init
		"0 456\n":   false,
		"-5 456\n":  false,
		"123 0\n":   false,
		"123\n":     false,
		"123 4 5\n": false,
		"":          false,
	} {
		_, _, err := parsePidFile([]byte(in))
		if (err == nil) != ok {
			t.Errorf("%q: err %v, want ok=%v", in, err, ok)
		}
	}
}

func TestCheckID(t *testing.T) {
	for id, ok := range map[string]bool{
		"0123456789abcd": true, "m-1_x": true,
		"": false, "../x": false, "a/b": false, "a.pid": false, strings.Repeat("a", 65): false,
	} {
		if err := checkID(id); (err == nil) != ok {
			t.Errorf("%q: %v, want ok=%v", id, err, ok)
		}
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("42 (sleep) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10"))
	f.Add([]byte("7 (a) b) (c) R 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0"))
	f.Add([]byte(")"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pgrp, start, err := parseStat(b)
		if err != nil && (pgrp != 0 || start != 0) {
			t.Errorf("error %v with values %d %d", err, pgrp, start)
		}
	})
}

func FuzzParsePidFile(f *testing.F) {
	f.Add([]byte("123 456\n"))
	f.Add([]byte("1 1"))
	f.Add([]byte("99999999999999999999 1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pid, start, err := parsePidFile(b)
		if err != nil {
			return
		}
		if pid <= 1 || start == 0 {
			t.Fatalf("accepted pid %d start %d", pid, start)
		}
		// What we write, we read back.
		p2, s2, err := parsePidFile([]byte(fmt.Sprintf("%d %d\n", pid, start)))
		if err != nil || p2 != pid || s2 != start {
			t.Fatalf("round trip: %d %d %v", p2, s2, err)
		}
	})
}

func TestLogWriterBound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.log")
	w, err := openLog(path, 10, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	// One write far over the limit is split across rotations.
	n, err := w.Write([]byte("0123456789abcdefghijklmnopqrst"))
	if n != 30 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	w.Close()
	if n, err := w.Write([]byte("dropped")); n != 7 || err != nil {
		t.Errorf("Write after Close = %d, %v", n, err)
	}
	for p, want := range map[string]string{path: "klmnopqrst", path + ".1": "abcdefghij"} {
		b, err := os.ReadFile(p)
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", p, b, err, want)
		}
	}
}
