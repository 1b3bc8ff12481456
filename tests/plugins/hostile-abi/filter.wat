;; A hostile filter written against the canonical ABI by hand, for what a
;; compiler's bindings never emit: lists whose elements all point at the
;; same bytes, a table grown past its limit, and a function whose name (shown
;; in trap backtraces) carries a forged log line. The first byte of the
;; request's `x-attack` header picks the attack:
;;   a  answer with 4,032 headers whose values are all the same 64 KiB
;;   n  answer with 100 headers whose names are all the same 60,000 bytes
;;   l  pass `counter-add` 4,032 labels that are all the same 64 KiB
;;   t  grow a table by 200,000 entries
;;   f  trap inside the function with the forged name
;; Anything else continues. The tests make it a component with
;; `gateway plugin componentize`.
(module
  (import "gateway:filter/types@0.1.0" "[method]request.header"
    (func $header (param i32 i32 i32 i32)))
  (import "gateway:filter/types@0.1.0" "[resource-drop]request"
    (func $drop_request (param i32)))
  (import "gateway:filter/types@0.1.0" "[resource-drop]response"
    (func $drop_response (param i32)))
  (import "gateway:filter/host@0.1.0" "counter-add"
    (func $counter_add (param i32 i32 i32 i32 f64)))

  ;; 16 pages: the shared block at 64 KiB, the lists at 128 KiB.
  (memory (export "memory") 16)
  (table $refs 1 funcref)

  (data (i32.const 16) "x-attack")
  (data (i32.const 32) "x-a")
  (data (i32.const 40) "v")
  (data (i32.const 48) "aliased")

  (global $heap (mut i32) (i32.const 1024))

  (func (export "cabi_realloc")
    (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    ;; Everything the host copies in is small and lives below the block.
    (if (i32.gt_u (i32.add (local.get $ptr) (local.get $size)) (i32.const 65536))
      (then unreachable))
    (global.set $heap (i32.add (local.get $ptr) (local.get $size)))
    (local.get $ptr))

  (func (export "gateway:filter/filter@0.1.0#configure")
    (param i32 i32) (result i32)
    ;; The shared block: 64 KiB of `a`, a valid header name and value.
    (memory.fill (i32.const 65536) (i32.const 0x61) (i32.const 65536))
    (i32.store8 (i32.const 320) (i32.const 0))
    (i32.const 320))

  ;; `count` list entries of 16 bytes at 128 KiB, each two (pointer, length)
  ;; pairs: the first pair ($p1, $l1), the second ($p2, $l2).
  (func $fill (param $count i32) (param $p1 i32) (param $l1 i32) (param $p2 i32) (param $l2 i32)
    (local $at i32)
    (local.set $at (i32.const 131072))
    (loop $next
      (i32.store (local.get $at) (local.get $p1))
      (i32.store offset=4 (local.get $at) (local.get $l1))
      (i32.store offset=8 (local.get $at) (local.get $p2))
      (i32.store offset=12 (local.get $at) (local.get $l2))
      (local.set $at (i32.add (local.get $at) (i32.const 16)))
      (local.set $count (i32.sub (local.get $count) (i32.const 1)))
      (br_if $next (local.get $count))))

  ;; Answers 200 with `count` headers from the list at 128 KiB.
  (func $respond (param $count i32) (result i32)
    (i32.store8 (i32.const 288) (i32.const 1))
    (i32.store16 (i32.const 292) (i32.const 200))
    (i32.store (i32.const 296) (i32.const 131072))
    (i32.store (i32.const 300) (local.get $count))
    (i32.store (i32.const 304) (i32.const 0))
    (i32.store (i32.const 308) (i32.const 0))
    (i32.const 288))

  (func $"forged\n2026-11-30T00:00:00.000000Z  INFO gateway::reload: reload #9 applied"
    unreachable)

  (func (export "gateway:filter/filter@0.1.0#on-request") (param $req i32) (result i32)
    (local $attack i32)
    (global.set $heap (i32.const 1024))
    (call $header (local.get $req) (i32.const 16) (i32.const 8) (i32.const 256))
    (call $drop_request (local.get $req))
    (if (i32.load8_u (i32.const 256))
      (then (local.set $attack (i32.load8_u (i32.load (i32.const 260))))))
    (if (i32.eq (local.get $attack) (i32.const 0x61)) ;; a
      (then
        (call $fill (i32.const 4032) (i32.const 32) (i32.const 3) (i32.const 65536) (i32.const 65536))
        (return (call $respond (i32.const 4032)))))
    (if (i32.eq (local.get $attack) (i32.const 0x6e)) ;; n
      (then
        (call $fill (i32.const 100) (i32.const 65536) (i32.const 60000) (i32.const 40) (i32.const 1))
        (return (call $respond (i32.const 100)))))
    (if (i32.eq (local.get $attack) (i32.const 0x6c)) ;; l
      (then
        (call $fill (i32.const 4032) (i32.const 65536) (i32.const 65536) (i32.const 65536) (i32.const 65536))
        (call $counter_add (i32.const 48) (i32.const 7) (i32.const 131072) (i32.const 4032) (f64.const 1))))
    (if (i32.eq (local.get $attack) (i32.const 0x74)) ;; t
      (then
        (if (i32.eq (table.grow $refs (ref.null func) (i32.const 200000)) (i32.const -1))
          (then (return (call $respond (i32.const 0)))))))
    (if (i32.eq (local.get $attack) (i32.const 0x66)) ;; f
      (then (call $"forged\n2026-11-30T00:00:00.000000Z  INFO gateway::reload: reload #9 applied")))
    (i32.store8 (i32.const 288) (i32.const 0))
    (i32.const 288))

  (func (export "gateway:filter/filter@0.1.0#on-response")
    (param $req i32) (param $resp i32) (result i32)
    (call $drop_request (local.get $req))
    (call $drop_response (local.get $resp))
    (i32.store8 (i32.const 288) (i32.const 0))
    (i32.const 288))
)
