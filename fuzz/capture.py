#!/usr/bin/env python3
"""fuzz/capture.py — seed the fuzz corpora from a real migration's traffic.

Runs `rdmamig --dst` and `rdmamig --src --transport tcp` with a fresh
pre-shared key (the built-in KVM VMM, so /dev/kvm is needed) through a TCP proxy on 127.0.0.1 that records
every byte each way, cuts the streams into wire.h frames, and writes the
seeds each target of fuzz/ takes (see the input format at the top of each
fuzz-*.c) into fuzz/corpus/<target>/.  WRITE frames (guest RAM) are left
out: no parser of fuzz/ reads them.

    fuzz/capture.py [--bin build/rdmamig] [--out fuzz/corpus] [--vcpus 2]
"""
import argparse, os, select, socket, struct, subprocess, sys, threading, time, hashlib

HDR = struct.Struct('<HHIII')
CTRL = struct.Struct('<HHIQQ')
HELLO, HELLO_ACK, REFUSE, LAYOUT, WRITE, MARKER, CTRL_T, CREDIT, ABORT, BYE, AUTH = range(1, 12)
MIG_SETUP, MIG_STATE, MIG_RECOVER, MIG_OUTCOME = 0x101, 0x105, 0x10a, 0x10b


class Proxy(threading.Thread):
    """Accepts on lport, connects each client to dport, logs (seq, conn, dir, bytes)."""

    def __init__(self, dport):
        super().__init__(daemon=True)
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(('127.0.0.1', 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.dport = dport
        self.chunks = []
        self.lock = threading.Lock()
        self.nconn = 0

    def pump(self, conn, a, b):
        socks = {a: (b, 0), b: (a, 1)}
        while socks:
            r, _, _ = select.select(list(socks), [], [], 30)
            if not r:
                break
            for s in r:
                data = s.recv(1 << 20)
                other, d = socks[s]
                if not data:
                    try:
                        other.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    del socks[s]
                    continue
                with self.lock:
                    self.chunks.append((conn, d, data))
                other.sendall(data)

    def run(self):
        while True:
            c, _ = self.ls.accept()
            u = socket.create_connection(('127.0.0.1', self.dport))
            conn = self.nconn
            self.nconn += 1
            threading.Thread(target=self.pump, args=(conn, c, u), daemon=True).start()


def frames(chunks):
    """Cut each (conn, dir) stream into frames: [(order, conn, dir, type, flags, body)]."""
    bufs, out, order = {}, [], 0
    for conn, d, data in chunks:
        key = (conn, d)
        bufs[key] = bufs.get(key, b'') + data
        b = bufs[key]
        while len(b) >= HDR.size:
            t, fl, ln, cr, rs = HDR.unpack_from(b)
            if len(b) < HDR.size + ln:
                break
            body = b[HDR.size:HDR.size + ln]
            out.append((order, conn, d, t, fl, body))
            order += 1
            b = b[HDR.size + ln:]
        bufs[key] = b
    return out


def frame(t, body, flags=0):
    return HDR.pack(t, flags, len(body), 0, 0) + body


def put(out, target, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data)


def vm_shape(stream):
    """nr_vcpus, ram_size, xsave bytes, has xcrs, has debugregs of a state stream."""
    def sections(b, pos, end, sub):
        while pos < end:
            tag = b[pos:pos + 1]
            if tag in (b'E', b''):
                return
            if tag == b'F':
                nl = b[pos + 1]
                name = b[pos + 2:pos + 2 + nl].decode()
                p = pos + 2 + nl
                typ, es, cnt = struct.unpack_from('<BII', b, p)
                p += 9
                yield ('F', name, b[p:p + es * cnt], es, cnt)
                pos = p + es * cnt
                continue
            if tag == b'S':
                nl = b[pos + 1]
                p = pos + 2 + nl
            else:  # 'U'
                nl = b[pos + 2]
                p = pos + 3 + nl
            name = b[p - nl:p].decode()
            inst, ver, bl = struct.unpack_from('<III', b, p) if tag == b'S' else (0,) + struct.unpack_from('<II', b, p)
            p += 12 if tag == b'S' else 8
            yield (tag.decode(), name, p, p + bl)
            pos = p + bl
    shape = dict(vcpus=0, ram=0, xsave=0, xcrs=0, dbg=0)
    for s in sections(stream, 8, len(stream), False):
        if s[0] != 'S':
            continue
        if s[1] == 'vm':
            for f in sections(stream, s[2], s[3], True):
                if f[0] == 'F' and f[1] == 'nr_vcpus':
                    shape['vcpus'] = struct.unpack('<I', f[2])[0]
                if f[0] == 'F' and f[1] == 'ram_size':
                    shape['ram'] = struct.unpack('<Q', f[2])[0]
        if s[1] == 'cpu':
            for f in sections(stream, s[2], s[3], True):
                if f[0] == 'U' and f[1] == 'cpu/xsave':
                    for g in sections(stream, f[2], f[3], True):
                        shape['xsave'] = g[4]
                if f[0] == 'U' and f[1] == 'cpu/xcrs':
                    shape['xcrs'] = 1
                if f[0] == 'U' and f[1] == 'cpu/debugregs':
                    shape['dbg'] = 1
    return shape


def vms_field(name, typ, esize, data):
    n = name.encode()
    return b'F' + bytes([len(n)]) + n + struct.pack('<BII', typ, esize, len(data) // esize) + data


def vms_section(name, inst, ver, body, sub=None):
    n = name.encode()
    if sub is None:
        return b'S' + bytes([len(n)]) + n + struct.pack('<III', inst, ver, len(body)) + body
    return b'U' + bytes([sub, len(n)]) + n + struct.pack('<II', ver, len(body)) + body


def vmstate_seeds(out):
    """Streams for fuzz-vmstate's own "dev" and "pair" tables, by the format of kvm/vmstate.h."""
    extra = vms_section('dev/extra', 0, 1, vms_field('extra', 4, 8, struct.pack('<Q', 7)), 0)
    opt = vms_section('dev/opt', 0, 2, vms_field('extra', 4, 8, struct.pack('<Q', 8)), 1)
    unknown = vms_section('dev/unknown', 0, 1, b'', 1)
    for ver in (1, 2):
        body = (vms_field('u8', 1, 1, b'\x01') + vms_field('u16', 2, 2, b'\x02\x00') +
                vms_field('u32', 3, 4, struct.pack('<I', 3)) + vms_field('u64', 4, 8, bytes(32)) +
                vms_field('blob', 5, 1, bytes(range(24))) + vms_field('var', 2, 2, bytes(6)))
        if ver == 2:
            body += vms_field('v2', 4, 8, bytes(8))
        body += extra + opt + unknown
        pair = vms_field('idx', 3, 4, bytes(12)) + vms_field('val', 4, 8, bytes(24))
        put(out, 'fuzz-vmstate', b'RMVS' + struct.pack('<I', 1) + vms_section('dev', 0, ver, body) +
            vms_section('pair', 1, 1, pair) + b'E')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--bin', default='build/rdmamig')
    ap.add_argument('--out', default='fuzz/corpus')
    ap.add_argument('--vcpus', default='2')
    a = ap.parse_args()

    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    dport = s.getsockname()[1]
    s.close()
    key = os.path.join(a.out, '.capture-key')
    os.makedirs(a.out, exist_ok=True)
    with open(key, 'wb') as f:
        f.write(os.urandom(32))
    os.chmod(key, 0o600)
    dst = subprocess.Popen([a.bin, '--dst', '--listen', '127.0.0.1:%d' % dport, '--transport', 'tcp',
                            '--psk', key, '--run-after', '1', '-q'])
    time.sleep(0.5)
    px = Proxy(dport)
    px.start()
    src = subprocess.run([a.bin, '--src', '--connect', '127.0.0.1:%d' % px.port, '--transport', 'tcp',
                          '--psk', key, '--mem', '16M', '--vcpus', a.vcpus, '--warmup', '1', '--verify', '-q'],
                         timeout=120)
    dst.wait(timeout=60)
    os.unlink(key)
    time.sleep(0.5)
    if src.returncode or dst.returncode:
        sys.exit('capture: the migration failed (source %d, destination %d)' % (src.returncode, dst.returncode))

    fr = frames(px.chunks)
    nchan = px.nconn
    # The transport's own frames, after each channel's handshake frame.
    for d, role in ((0, 0), (1, 1)):   # 0: source -> destination, read by a destination
        recs = [f for f in fr if f[2] == d and f[3] not in (HELLO, HELLO_ACK, WRITE)]
        # As captured, with the key (bit 6): the AUTH steps parse, the
        # proofs (over another session's nonces) fail.
        put(a.out, 'fuzz-frames', bytes([role | (nchan - 1) << 1 | 0x40]) +
            b''.join(bytes([f[1]]) + frame(f[3], f[5], f[4]) for f in recs))
        recs = [f for f in recs if f[3] != AUTH]
        for stream in (0, 8):
            cfg = role | (nchan - 1) << 1 | stream
            put(a.out, 'fuzz-frames', bytes([cfg]) + b''.join(bytes([f[1]]) + frame(f[3], f[5], f[4]) for f in recs))
        # Each message alone too, so a minimizer keeps the short paths.
        for f in recs:
            put(a.out, 'fuzz-frames', bytes([role | (nchan - 1) << 1]) + bytes([f[1]]) + frame(f[3], f[5], f[4]))
    # The TCP receiver's stream (fuzz-tcp-rx): channel 0 each way, WRITE
    # frames cut to their first 4 KiB so a seed stays small.
    for d, role in ((0, 0), (1, 1)):
        out, writes = b'', 0
        for f in fr:
            if f[1] != 0 or f[2] != d or f[3] in (HELLO, HELLO_ACK, AUTH):
                continue
            body = f[5]
            if f[3] == WRITE:
                if writes >= 8:
                    continue
                writes += 1
                region, rsv, off, ln = struct.unpack_from('<IIQQ', body)
                ln = min(ln, 4096)
                body = struct.pack('<IIQQ', region, rsv, off, ln) + body[32:32 + ln]
            out += frame(f[3], body, f[4])
        put(a.out, 'fuzz-tcp-rx', bytes([role]) + out)
    hellos = [f for f in fr if f[3] == HELLO]
    acks = [f for f in fr if f[3] == HELLO_ACK]
    for k in (0, 8):    # without and with this side's key
        put(a.out, 'fuzz-handshake', bytes([0 | k]) + b''.join(frame(f[3], f[5]) for f in hellos))
        put(a.out, 'fuzz-handshake', bytes([4 | k]) + frame(HELLO, hellos[0][5]) * 2)
        for f in acks:
            put(a.out, 'fuzz-handshake', bytes([1 | k]) + frame(f[3], f[5]))
    # Engine messages: reassemble channel 0's CTRL fragments each way.
    msgs, cur = [], {}
    for f in fr:
        if f[3] != CTRL_T:
            continue
        typ, _, frag, total, epoch = CTRL.unpack_from(f[5])
        key = f[2]
        if f[4] & 1:
            cur[key] = b''
        cur[key] += f[5][CTRL.size:]
        if f[4] & 2:
            msgs.append((typ, cur.pop(key)))
    for typ, body in msgs:
        if typ == MIG_SETUP:
            put(a.out, 'fuzz-engine', bytes([0]) + body)
        # In every state (and one unknown): the table and body checks.
        for st in range(12):
            put(a.out, 'fuzz-engine', bytes([1, st]) + struct.pack('<H', typ) + body)
        if typ == MIG_STATE:
            sh = vm_shape(body)
            prefix = struct.pack('<BBHIQQ', (sh['vcpus'] - 1) % 8, sh['xcrs'] | sh['dbg'] << 1, 0,
                                 sh['xsave'], sh['ram'], 0)
            put(a.out, 'fuzz-state', prefix + body)
            put(a.out, 'fuzz-vmstate', body)
    # A plain run has no recovery: RECOVER and OUTCOME as the engine sends them.
    mid = next((struct.unpack_from('<Q', b, 72)[0] for t, b in msgs if t == MIG_SETUP), 1)
    for st in range(12):
        for flags in (0, 1):
            put(a.out, 'fuzz-engine', bytes([1, st]) + struct.pack('<HQII', MIG_RECOVER, mid, flags, 0))
        for go, ran in ((0, 0), (1, 0), (1, 1)):
            put(a.out, 'fuzz-engine', bytes([1, st]) + struct.pack('<HQII', MIG_OUTCOME, mid, go, ran))
    vmstate_seeds(a.out)
    print('capture: %d channels, %d frames, %d engine messages (%s)' %
          (nchan, len(fr), len(msgs), ', '.join('%#x:%d' % (t, len(b)) for t, b in msgs)))


if __name__ == '__main__':
    main()
