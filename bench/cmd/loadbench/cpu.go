package main

import (
	"bytes"
	"os"
	"strconv"
	"strings"
	"time"
)

// cpuUse is the CPU time a run used per request served, by process and in
// all: the proxy, redis-server, the upstream (this process: during a run it
// does little else), wrk, and the whole machine, whose CPU time beyond the
// four is the kernel's work charged to none of them (softirqs of the
// loopback traffic, mostly) and anything else running; and the time the
// hypervisor took the machine's CPUs away from it (steal), which says how
// contended the run was.
type cpuUse struct{ proxy, redis, upstream, wrk, machine, stolen time.Duration }

// other is the machine's CPU time per request that none of the processes
// was charged. It comes out below zero when the hypervisor steals CPU time:
// here the processes are charged for time stolen while they ran, the
// machine's busy time is not.
func (u cpuUse) other() time.Duration {
	return u.machine - u.proxy - u.redis - u.upstream - u.wrk
}

// medianCPU is the field-by-field median of uses.
func medianCPU(uses []cpuUse) cpuUse {
	field := func(f func(cpuUse) time.Duration) time.Duration {
		return time.Duration(medianBy(uses, func(u cpuUse) float64 { return float64(f(u)) }))
	}
	return cpuUse{
		proxy:    field(func(u cpuUse) time.Duration { return u.proxy }),
		redis:    field(func(u cpuUse) time.Duration { return u.redis }),
		upstream: field(func(u cpuUse) time.Duration { return u.upstream }),
		wrk:      field(func(u cpuUse) time.Duration { return u.wrk }),
		machine:  field(func(u cpuUse) time.Duration { return u.machine }),
		stolen:   field(func(u cpuUse) time.Duration { return u.stolen }),
	}
}

// sampleCPU is the CPU time used so far by proxy p, redis-server, this
// process and the machine (wrk's comes from its own exit status).
func sampleCPU(p *proxy) cpuUse {
	busy, stolen := machineCPUTime()
	return cpuUse{proxy: cpuTime(p.pid), redis: cpuTime(redisPID), upstream: cpuTime(os.Getpid()), machine: busy, stolen: stolen}
}

// machineCPUTime is the busy CPU time of all the machine's CPUs so far, from
// /proc/stat: user, nice, system, irq and softirq (not idle and iowait); and
// their steal time. Zeros where /proc is not there.
func machineCPUTime() (busy, stolen time.Duration) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0
	}
	ticks := func(fields ...int) time.Duration {
		var n int64
		for _, i := range fields {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			n += v
		}
		return time.Duration(n) * (time.Second / 100) // USER_HZ
	}
	return ticks(1, 2, 3, 6, 7), ticks(8) // user nice system (idle iowait) irq softirq; steal
}

// cpuTime is the CPU time (user + system) process pid has used so far, from
// /proc (clock ticks of 10ms, so runs of seconds measure it to a few per cent).
// Zero where /proc is not there.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// fields after the command name, which may hold spaces: state is the
	// first, utime the 12th and stime the 13th
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * (time.Second / 100) // USER_HZ is 100 on Linux
}

// fmtCPUUse renders one side of the CPU table: the proxy, the upstream,
// wrk, Redis, the rest, the machine and the steal, each ending in a tab.
func fmtCPUUse(u cpuUse) string {
	var b strings.Builder
	for _, d := range []time.Duration{u.proxy, u.upstream, u.wrk, u.redis, u.other(), u.machine, u.stolen} {
		b.WriteString(fmtMicros(d))
		b.WriteByte('\t')
	}
	return b.String()
}
