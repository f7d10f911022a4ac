// Command healthcheck is the containers' health probe: the runtime images
// are distroless, with no shell, curl or wget. It GETs one URL and exits 0
// on a 2xx answer, 1 otherwise. It never prints the response body (the
// probe's output ends up in `docker inspect`), only a one-line reason.
//
//	healthcheck http://127.0.0.1:8081/healthz
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	if err := check(os.Args[1:], 5*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "healthcheck:", err)
		os.Exit(1)
	}
}

func check(args []string, timeout time.Duration) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: healthcheck <http URL>")
	}
	client := &http.Client{
		Timeout: timeout,
		// A probe follows nothing: a redirect is not health.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     &http.Transport{Proxy: nil},
	}
	resp, err := client.Get(args[0])
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s answered %s", args[0], resp.Status)
	}
	return nil
}
