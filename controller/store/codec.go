package store

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// On-disk encodings. They are deliberately tiny and hand-rolled: the store is
// on the hot path of every controller write, and a fixed binary layout keeps
// decoding allocation-light and independent of any serialization library.

// errCorrupt marks a record that could not be decoded.
var errCorrupt = errors.New("store: corrupt record")

// dataHeaderLen is the fixed prefix of a data bucket value: createRev, modRev.
const dataHeaderLen = 16

// encodeData lays out a data bucket value as
// createRev (8 bytes BE) | modRev (8 bytes BE) | value.
func encodeData(value []byte, createRev, modRev int64) []byte {
	buf := make([]byte, dataHeaderLen+len(value))
	binary.BigEndian.PutUint64(buf[0:8], uint64(createRev))
	binary.BigEndian.PutUint64(buf[8:16], uint64(modRev))
	copy(buf[dataHeaderLen:], value)
	return buf
}

// decodeData turns a data bucket entry into a KV. The value is copied because
// bolt memory is only valid for the life of the transaction.
func decodeData(key, raw []byte) (KV, error) {
	if len(raw) < dataHeaderLen {
		return KV{}, fmt.Errorf("decode key %q: %d bytes: %w", key, len(raw), errCorrupt)
	}
	return KV{
		Key:            string(key),
		Value:          append([]byte{}, raw[dataHeaderLen:]...),
		CreateRevision: int64(binary.BigEndian.Uint64(raw[0:8])),
		ModRevision:    int64(binary.BigEndian.Uint64(raw[8:16])),
	}, nil
}

// revKey is the log bucket key of a revision. Big-endian so that bolt's byte
// order is revision order and cursors can seek to a revision.
func revKey(rev int64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(rev))
	return b[:]
}

func decodeRevKey(b []byte) (int64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("decode revision key of %d bytes: %w", len(b), errCorrupt)
	}
	return int64(binary.BigEndian.Uint64(b)), nil
}

// encodeEvents lays out the events of one revision as
// uvarint count, then per event: type byte, uvarint len + key,
// uvarint len + value, uvarint createRev, uvarint modRev.
func encodeEvents(evs []Event) []byte {
	n := binary.MaxVarintLen64
	for _, ev := range evs {
		n += 1 + 4*binary.MaxVarintLen64 + len(ev.KV.Key) + len(ev.KV.Value)
	}
	buf := make([]byte, 0, n)
	buf = binary.AppendUvarint(buf, uint64(len(evs)))
	for _, ev := range evs {
		buf = append(buf, byte(ev.Type))
		buf = binary.AppendUvarint(buf, uint64(len(ev.KV.Key)))
		buf = append(buf, ev.KV.Key...)
		buf = binary.AppendUvarint(buf, uint64(len(ev.KV.Value)))
		buf = append(buf, ev.KV.Value...)
		buf = binary.AppendUvarint(buf, uint64(ev.KV.CreateRevision))
		buf = binary.AppendUvarint(buf, uint64(ev.KV.ModRevision))
	}
	return buf
}

// decodeEvents decodes a log entry, keeping only events whose key has the
// prefix. All returned memory is freshly allocated (safe after the bolt tx).
func decodeEvents(raw []byte, prefix string) ([]Event, error) {
	d := decoder{buf: raw}
	count := d.uvarint()
	var evs []Event
	for i := uint64(0); i < count && d.err == nil; i++ {
		typ := EventType(d.byte())
		key := d.bytes()
		val := d.bytes()
		create := int64(d.uvarint())
		mod := int64(d.uvarint())
		if d.err != nil {
			break
		}
		if typ != EventPut && typ != EventDelete {
			return nil, fmt.Errorf("decode event %d: type %d: %w", i, typ, errCorrupt)
		}
		if !hasPrefix(key, prefix) {
			continue
		}
		evs = append(evs, Event{Type: typ, KV: KV{
			Key:            string(key),
			Value:          append([]byte{}, val...),
			CreateRevision: create,
			ModRevision:    mod,
		}})
	}
	if d.err != nil {
		return nil, fmt.Errorf("decode events: %w", d.err)
	}
	return evs, nil
}

type decoder struct {
	buf []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.buf) < 1 {
		d.err = errCorrupt
		return 0
	}
	b := d.buf[0]
	d.buf = d.buf[1:]
	return b
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if uint64(len(d.buf)) < n {
		d.err = errCorrupt
		return nil
	}
	b := d.buf[:n]
	d.buf = d.buf[n:]
	return b
}

func hasPrefix(key []byte, prefix string) bool {
	return len(key) >= len(prefix) && string(key[:len(prefix)]) == prefix
}
