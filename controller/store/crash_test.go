package store

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// crashDirEnv tells a re-executed test binary to act as the crash child.
const crashDirEnv = "MERIDIAN_STORE_CRASH_CHILD_DB"

// crashRoundEnv gives the child a round number so its keys are unique.
const crashRoundEnv = "MERIDIAN_STORE_CRASH_CHILD_ROUND"

// TestCrashChild is the body of the child process of TestCrashDurability.
// Run normally (without the env var) it does nothing.
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashDirEnv)
	if path == "" {
		return
	}
	round := os.Getenv(crashRoundEnv)
	s, err := Open(path, Options{Logger: quietLogger()})
	if err != nil {
		fmt.Printf("error open: %v\n", err)
		os.Exit(2)
	}
	// os.Stdout is unbuffered: every Printf is one write(2) of a line,
	// so a line the parent reads was written after the ack was known.
	fmt.Println("ready")
	// Safety net if the parent dies without killing us.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var mu sync.Mutex // one line per write(2), no interleaving
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				id := fmt.Sprintf("r%s-w%d-%d", round, w, i)
				val := []byte("value-" + id)
				rev, err := s.Update(ctx, func(tx Tx) error {
					// Two keys per transaction: both or neither may exist.
					if err := tx.Put("a/"+id, val); err != nil {
						return err
					}
					return tx.Put("b/"+id, val)
				})
				if err != nil {
					return
				}
				mu.Lock()
				fmt.Printf("ack %s %d\n", id, rev)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	os.Exit(0)
}

func TestCrashDurability(t *testing.T) {
	path := filepath.Join(t.TempDir(), "crash.db")
	const rounds = 5
	totalAcks := 0
	for round := 0; round < rounds; round++ {
		acks := runCrashChild(t, path, round, time.Duration(50+rand.IntN(351))*time.Millisecond)
		totalAcks += len(acks)
		s, err := Open(path, Options{Logger: quietLogger()})
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		checkCrashState(t, s, round, acks)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d rounds, %d acknowledged transactions verified", rounds, totalAcks)
	if totalAcks == 0 {
		t.Fatal("no child ever acknowledged a write: the test proved nothing")
	}
}

type crashAck struct {
	id  string
	rev int64
}

// runCrashChild runs the child writer, SIGKILLs it delay after it is ready
// and returns the writes it acknowledged.
func runCrashChild(t *testing.T, path string, round int, delay time.Duration) []crashAck {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+path, crashRoundEnv+"="+strconv.Itoa(round))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var acks []crashAck
	handle := func(line string) {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "ack" {
			rev, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil {
				t.Fatalf("bad ack line %q", line)
			}
			acks = append(acks, crashAck{f[1], rev})
		} else if strings.HasPrefix(line, "error") {
			t.Fatalf("child: %s", line)
		}
	}
	// Wait for ready, so the kill lands while writes are in flight.
	select {
	case l := <-lines:
		if l != "ready" {
			t.Fatalf("child said %q, want ready", l)
		}
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("child never became ready")
	}
	timer := time.After(delay)
read:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				break read
			}
			handle(l)
		case <-timer:
			break read
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill child: %v", err)
	}
	// Lines already written before the kill are acks too.
	for l := range lines {
		handle(l)
	}
	_ = cmd.Wait()
	t.Logf("round %d: killed after %v, %d acks", round, delay, len(acks))
	return acks
}

func checkCrashState(t *testing.T, s *Bolt, round int, acks []crashAck) {
	t.Helper()
	var maxRev int64
	for _, a := range acks {
		maxRev = max(maxRev, a.rev)
	}
	if s.Revision() < maxRev {
		t.Fatalf("round %d: revision %d after restart, but revision %d was acknowledged", round, s.Revision(), maxRev)
	}
	err := s.View(context.Background(), func(tx ReadTx) error {
		for _, a := range acks {
			for _, p := range []string{"a/", "b/"} {
				kv, ok, err := tx.Get(p + a.id)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("acknowledged key %s%s (rev %d) lost", p, a.id, a.rev)
				}
				if string(kv.Value) != "value-"+a.id || kv.ModRevision != a.rev {
					return fmt.Errorf("acknowledged key %s%s = %q rev %d, want rev %d", p, a.id, kv.Value, kv.ModRevision, a.rev)
				}
			}
		}
		// Atomicity: every transaction wrote a/<id> and b/<id> together,
		// acknowledged or not.
		as, err := tx.List("a/", "", 0)
		if err != nil {
			return err
		}
		bs, err := tx.List("b/", "", 0)
		if err != nil {
			return err
		}
		if len(as) != len(bs) {
			return fmt.Errorf("half-written transactions: %d a/ keys, %d b/ keys", len(as), len(bs))
		}
		for i := range as {
			if as[i].Key[2:] != bs[i].Key[2:] || as[i].ModRevision != bs[i].ModRevision {
				return fmt.Errorf("half-written transaction: %s@%d vs %s@%d", as[i].Key, as[i].ModRevision, bs[i].Key, bs[i].ModRevision)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("round %d: %v", round, err)
	}
	// The change log must be intact too: a watch from 0 sees every
	// revision up to the current one, each with both keys.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := s.Watch(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	for want := int64(1); want <= s.Revision(); want++ {
		select {
		case r := <-ch:
			if r.Err != nil || r.Revision != want || len(r.Events) != 2 {
				t.Fatalf("round %d: log revision %d: %+v", round, want, r)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: log ends before revision %d", round, want)
		}
	}
}
