package tunnel

import (
	"errors"
	"testing"

	"golang.zx2c4.com/wireguard/conn"
)

// sendRecorder is the bind under gsoBind: it records the batches it is
// given and fails the call numbered failAt (1-based; 0 never).
type sendRecorder struct {
	conn.Bind
	calls  [][][]byte
	failAt int
}

var errSend = errors.New("send failed")

func (r *sendRecorder) Send(bufs [][]byte, _ conn.Endpoint) error {
	r.calls = append(r.calls, bufs)
	if len(r.calls) == r.failAt {
		return errSend
	}
	return nil
}

func TestGSOBindSplits(t *testing.T) {
	batch := func(sizes ...int) [][]byte {
		var bufs [][]byte
		for _, s := range sizes {
			bufs = append(bufs, make([]byte, s))
		}
		return bufs
	}
	repeat := func(size, n int) []int {
		s := make([]int, n)
		for i := range s {
			s[i] = size
		}
		return s
	}
	for _, tc := range []struct {
		name  string
		bufs  [][]byte
		calls int
	}{
		{"gVisor segments, 46 of 1,424", batch(repeat(1424, 46)...), 2},
		{"kernel TUN segments, 45 of 1,452", batch(repeat(1452, 45)...), 1},
		{"a full batch of 128", batch(repeat(1424, 128)...), 3},
		{"one datagram", batch(148), 1},
		{"an oversized datagram goes alone", batch(100, 70000, 100), 3},
		{"empty", nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &sendRecorder{}
			if err := (gsoBind{rec}).Send(tc.bufs, nil); err != nil {
				t.Fatal(err)
			}
			if len(rec.calls) != tc.calls {
				t.Errorf("%d inner sends, want %d", len(rec.calls), tc.calls)
			}
			var seen int
			for i, c := range rec.calls {
				total := 0
				for _, b := range c {
					if &b[0] != &tc.bufs[seen][0] {
						t.Fatalf("call %d: buffers out of order at %d", i, seen)
					}
					total += len(b)
					seen++
				}
				if total > gsoLimit && len(c) > 1 {
					t.Errorf("call %d: %d bytes in %d datagrams, over the %d limit", i, total, len(c), gsoLimit)
				}
			}
			if seen != len(tc.bufs) {
				t.Errorf("%d of %d datagrams sent", seen, len(tc.bufs))
			}
		})
	}

	// A failed send stops the batch and is returned.
	rec := &sendRecorder{failAt: 1}
	if err := (gsoBind{rec}).Send(batch(repeat(1424, 128)...), nil); !errors.Is(err, errSend) {
		t.Errorf("Send = %v, want the inner error", err)
	}
	if len(rec.calls) != 1 {
		t.Errorf("%d inner sends after a failure, want 1", len(rec.calls))
	}
}
