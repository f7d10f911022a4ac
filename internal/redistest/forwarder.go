package redistest

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"
)

// Forwarder stands for a name that points at one Redis and may be made to
// point at another, as a DNS name or a proxy does across a failover: it
// forwards each new connection to the server it points at when the
// connection comes in; connections already open stay where they are.
type Forwarder struct {
	Addr string // host:port on 127.0.0.1

	mu     sync.Mutex
	target string
	delay  time.Duration
	cuts   int // CutAfterOneReply calls pending
	ln     net.Listener
	conns  []net.Conn
}

// Forward starts a forwarder to target; it stops with the test.
func Forward(tb testing.TB, target string) *Forwarder {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	f := &Forwarder{Addr: ln.Addr().String(), target: target, ln: ln}
	go f.serve()
	tb.Cleanup(f.close)
	return f
}

// URL is the go-redis URL of the forwarder (database 0).
func (f *Forwarder) URL() string { return "redis://" + f.Addr + "/0" }

// Delay holds what clients send for d before it reaches Redis, on every
// connection, as a slow network or a busy Redis would: each call then takes
// at least d.
func (f *Forwarder) Delay(d time.Duration) {
	f.mu.Lock()
	f.delay = d
	f.mu.Unlock()
}

// PointTo sends the connections that come in from now on to target.
func (f *Forwarder) PointTo(target string) {
	f.mu.Lock()
	f.target = target
	f.mu.Unlock()
}

// CutAfterOneReply passes on the next reply on any connection up to the
// end of its first line (one call's reply, when it is a one-line one) and
// then closes that connection, as Redis or a proxy closing it between two
// replies of a pipeline would. Called n times, it does so to the next n
// replies.
func (f *Forwarder) CutAfterOneReply() {
	f.mu.Lock()
	f.cuts++
	f.mu.Unlock()
}

// cutNow reports whether a CutAfterOneReply is pending, and takes it.
func (f *Forwarder) cutNow() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cuts == 0 {
		return false
	}
	f.cuts--
	return true
}

func (f *Forwarder) serve() {
	for {
		in, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		target := f.target
		f.mu.Unlock()
		out, err := net.DialTimeout("tcp", target, 2*time.Second)
		if err != nil {
			_ = in.Close()
			continue
		}
		f.mu.Lock()
		f.conns = append(f.conns, in, out)
		f.mu.Unlock()
		go f.forwardRequests(out, in)
		go f.forwardReplies(in, out)
	}
}

// forwardReplies copies src to dst as replies come, up to a pending cut
// (CutAfterOneReply).
func (f *Forwarder) forwardReplies(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if i := bytes.Index(buf[:n], []byte("\r\n")); i >= 0 && f.cutNow() {
			_, _ = dst.Write(buf[:i+2])
			return
		}
		if _, werr := dst.Write(buf[:n]); err != nil || werr != nil {
			return
		}
	}
}

// forwardRequests copies src to dst, each read held for the delay set
// when it was read (in order: a later read is never written first).
func (f *Forwarder) forwardRequests(dst, src net.Conn) {
	type chunk struct {
		data []byte
		due  time.Time
	}
	chunks := make(chan chunk, 1024)
	go func() {
		defer close(chunks)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				f.mu.Lock()
				due := time.Now().Add(f.delay)
				f.mu.Unlock()
				chunks <- chunk{buf[:n], due}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range chunks {
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.data); err != nil {
			break
		}
	}
	_ = dst.Close()
	_ = src.Close()
	for range chunks { // until the reader ends on the closed src
	}
}

func (f *Forwarder) close() {
	_ = f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		_ = c.Close()
	}
}
