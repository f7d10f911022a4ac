package redisstats

import "testing"

func TestParse(t *testing.T) {
	info := "# Server\r\nredis_version:7.0.15\r\n# Commandstats\r\n" +
		"cmdstat_evalsha:calls=20000,usec=282316,usec_per_call=14.12,rejected_calls=0,failed_calls=6\r\n" +
		"cmdstat_config|resetstat:calls=1,usec=10,usec_per_call=10.00,rejected_calls=0,failed_calls=0\r\n"
	got := Parse(info)
	if c := got["evalsha"]; c != (Command{Calls: 20000, Usec: 282316}) {
		t.Fatalf("evalsha: %+v", c)
	}
	if c := got["config|resetstat"]; c != (Command{Calls: 1, Usec: 10}) {
		t.Fatalf("config|resetstat: %+v", c)
	}
	if len(got) != 2 {
		t.Fatalf("%d commands, want 2: %v", len(got), got)
	}
	if c := got["eval"]; c != (Command{}) {
		t.Fatalf("a command Redis never ran: %+v", c)
	}
}
