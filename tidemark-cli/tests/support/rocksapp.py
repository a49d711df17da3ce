"""An independent RocksDB application for tidemark's tests: rocksdict (PyPI), which bundles its
own, older RocksDB (9.x). Commands:

  write DIR START COUNT [--flush-each N] [--crash] [--keep-wal]   put keys START..START+COUNT
      in `default` and `users` (creating them); --flush-each flushes every N keys (one L0 file
      each, auto compaction off); --crash exits without closing (the last writes only in the
      WAL); --keep-wal keeps WAL files an hour (as an application that lets incrementals read
      its WAL sets)
  delete DIR START COUNT                             delete keys START..START+COUNT of `default`
      and `users` (as `write` names them); WAL files kept an hour
  ingest DIR START COUNT [--only]                    write keys z START..START+COUNT of `default`
      into an SST file with SstFileWriter, ingest it (IngestExternalFile), then (without
      --only) put `after` through the WAL; WAL files kept an hour
  ingest-compact DIR START COUNT [--no-put] [--crash]  in one session: ingest keys z START..START+COUNT
      of `default` (as `ingest --only`), put a key among them (not with --no-put: nothing then
      moves the sequence number) and flush, and compact every column family's whole range,
      bottommost files included, so that the ingested file is merged into a compaction's output;
      --crash exits without closing the database (RocksDB's LOG keeps its last lines in a buffer)
  fifo DIR START ROUNDS                              with FIFO compaction (files beyond 250 KB in all
      are deleted, oldest first): ROUNDS rounds of 1,000 random 100-byte values, each flushed
  queue DIR ROUND                                    a queue's work: 3,000 kept keys, then six rounds of
      1,000 jobs put, flushed, deleted and flushed (compactions then write nothing for them)
  compact DIR                                        compact every column family's whole range
  entity DIR                                         put a wide-column entity (PutEntity, two
      columns) at key `entity` of `default`; WAL files kept an hour
  big DIR KEY BYTES SEED                             put BYTES random bytes (from SEED) at KEY of
      `default`, creating the database if needed; WAL files kept an hour
  hold DIR                                          open the database, print "ready", and keep
      it open until stdin closes
  compressed DIR COUNT                              create a database of three column families of
      COUNT compressible 1,000-byte values each, flushed: `plain` (keys p…, no compression),
      `packed` (keys z…, zstd) and `bottom` (keys b…, no compression but zstd for the last level)
  sizes DIR                                         print the bytes of the live SST files by the
      first letter of their keys (JSON), opened read-only
  dump DIR                                          print every column family's keys and values
      as JSON ({cf: {hex key: hex value}}); fails if the database cannot be opened
"""
import json
import os
import sys

from rocksdict import AccessType, DBCompressionType, Options, Rdict, SstFileWriter


def options(keep_wal=False):
    o = Options(raw_mode=True)
    o.create_if_missing(True)
    if keep_wal:
        o.set_wal_ttl_seconds(3600)
    return o


def open_all(path, keep_wal):
    cfs = Rdict.list_cf(path)
    return Rdict(path, options(keep_wal), column_families={n: options(keep_wal) for n in cfs if n != "default"}), cfs


def sst_of(path, start, count):
    """Writes keys z START..START+COUNT with SstFileWriter into a file beside `path`; its name."""
    sst = path.rstrip("/") + "-ingest.sst"
    w = SstFileWriter(options(True))
    w.open(sst)
    for i in range(start, start + count):
        w[b"z%08d" % i] = b'{"ingested": %d}' % i
    w.finish()
    return sst


def ingest(path, start, count, only):
    sst = sst_of(path, start, count)
    db, _ = open_all(path, True)
    db.ingest_external_file([sst])
    if not only:
        db[b"after"] = b"1"
    db.close()
    os.remove(sst)


def ingest_compact(path, start, count, put, crash=False):
    sst = sst_of(path, start, count)
    db, cfs = open_all(path, True)
    db.ingest_external_file([sst])
    if put:
        db[b"z%08da" % start] = b'{"among": 1}'
        db.flush()
    # Bottommost files too: the ingested file is merged with the others into new ones.
    from rocksdict import BottommostLevelCompaction, CompactOptions
    c = CompactOptions()
    c.set_bottommost_level_compaction(BottommostLevelCompaction.force())
    for name in cfs:
        cf = db if name == "default" else db.get_column_family(name)
        cf.compact_range(None, None, c)
    os.remove(sst)
    if crash:
        sys.stdout.flush()
        os._exit(0)
    db.close()


def fifo(path, start, rounds):
    from rocksdict import DBCompactionStyle, FifoCompactOptions
    o = options(True)
    o.set_compaction_style(DBCompactionStyle.fifo())
    f = FifoCompactOptions()
    f.max_table_files_size = 250_000
    o.set_fifo_compaction_options(f)
    db = Rdict(path, o)
    for r in range(start, start + rounds):
        for i in range(1000):
            db[b"k%02d-%05d" % (r, i)] = os.urandom(100)
        db.flush()
    db.close()


def queue(path, base):
    db = Rdict(path, options(True))
    for i in range(3000):
        db[b"keep%06d" % (base * 3000 + i)] = b"k" * 50
    for r in range(6):
        jobs = [b"job%06d" % (base * 100000 + r * 1000 + i) for i in range(1000)]
        for j in jobs:
            db[j] = os.urandom(100)
        db.flush()
        for j in jobs:
            del db[j]
        db.flush()
    db.close()


def entity(path):
    db, _ = open_all(path, True)
    db.put_entity(b"entity", [b"", b"color"], [b"default", b"red"])
    db.close()


def compact(path):
    db, cfs = open_all(path, True)
    for name in cfs:
        cf = db if name == "default" else db.get_column_family(name)
        cf.compact_range(None, None)
    db.close()


def write(path, start, count, flush_each, crash, keep_wal=False):
    o = options(keep_wal)
    if flush_each:
        o.set_disable_auto_compactions(True)
    cfs = Rdict.list_cf(path) if os.path.exists(os.path.join(path, "CURRENT")) else ["default"]
    db = Rdict(path, o, column_families={n: options(keep_wal) for n in cfs if n != "default"})
    users = db.get_column_family("users") if "users" in cfs else db.create_column_family("users", options(keep_wal))
    for i in range(start, start + count):
        db[b"k%06d" % i] = b'{"n": %d}' % i
        users[i.to_bytes(4, "big")] = bytes([i % 251]) * (i % 40)
        if flush_each and (i - start + 1) % flush_each == 0:
            db.flush()
            users.flush()
    if crash:
        sys.stdout.flush()
        os._exit(0)
    db.close()


def delete(path, start, count):
    db, _ = open_all(path, True)
    users = db.get_column_family("users")
    for i in range(start, start + count):
        del db[b"k%06d" % i]
        del users[i.to_bytes(4, "big")]
    db.close()


def big(path, key, size, seed):
    import random
    cfs = Rdict.list_cf(path) if os.path.exists(os.path.join(path, "CURRENT")) else ["default"]
    db = Rdict(path, options(True), column_families={n: options(True) for n in cfs if n != "default"})
    db[key.encode()] = random.Random(seed).randbytes(size)
    db.close()


def compressed(path, count):
    db = Rdict(path, options())
    plain = options()
    plain.set_compression_type(DBCompressionType.none())
    packed = options()
    packed.set_compression_type(DBCompressionType.zstd())
    bottom = options()
    bottom.set_compression_type(DBCompressionType.none())
    bottom.set_bottommost_compression_type(DBCompressionType.zstd())
    for name, o, letter in [("plain", plain, b"p"), ("packed", packed, b"z"), ("bottom", bottom, b"b")]:
        cf = db.create_column_family(name, o)
        for i in range(count):
            cf[letter + b"%06d" % i] = (b"%06d " % i) * 142
        cf.flush()
    db.close()


def sizes(path):
    # Read-only: a read-write open would write an OPTIONS file with this script's options.
    cfs = Rdict.list_cf(path)
    db = Rdict(path, options(), column_families={n: options() for n in cfs if n != "default"},
               access_type=AccessType.read_only())
    out = {}
    for f in db.live_files():
        letter = f["start_key"][:1].decode()
        out[letter] = out.get(letter, 0) + f["size"]
    db.close()
    print(json.dumps(out, sort_keys=True))


def dump(path):
    cfs = Rdict.list_cf(path)
    db = Rdict(path, options(), column_families={n: options() for n in cfs if n != "default"})
    out = {}
    for name in cfs:
        cf = db if name == "default" else db.get_column_family(name)
        out[name] = {k.hex(): v.hex() for k, v in cf.items()}
    db.close()
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "write":
        args = sys.argv[2:]
        flush_each = int(args[args.index("--flush-each") + 1]) if "--flush-each" in args else 0
        write(args[0], int(args[1]), int(args[2]), flush_each, "--crash" in args, "--keep-wal" in args)
    elif cmd == "delete":
        delete(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "ingest":
        ingest(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), "--only" in sys.argv)
    elif cmd == "ingest-compact":
        ingest_compact(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), "--no-put" not in sys.argv, "--crash" in sys.argv)
    elif cmd == "fifo":
        fifo(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "queue":
        queue(sys.argv[2], int(sys.argv[3]))
    elif cmd == "compact":
        compact(sys.argv[2])
    elif cmd == "entity":
        entity(sys.argv[2])
    elif cmd == "big":
        big(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif cmd == "hold":
        cfs = Rdict.list_cf(sys.argv[2])
        db = Rdict(sys.argv[2], options(), column_families={n: options() for n in cfs if n != "default"})
        print("ready", flush=True)
        sys.stdin.read()
        db.close()
    elif cmd == "compressed":
        compressed(sys.argv[2], int(sys.argv[3]))
    elif cmd == "sizes":
        sizes(sys.argv[2])
    elif cmd == "dump":
        dump(sys.argv[2])
    else:
        sys.exit(f"unknown command {cmd}")
