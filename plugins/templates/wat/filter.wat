;; {{name}}: a filter written by hand in the WebAssembly text format: a
;; request with no User-Agent header is refused with 403; every other
;; request goes on. It takes no settings. Make it a component with
;;   gateway plugin componentize filter.wat -o {{name}}.wasm
;;
;; The names and layouts are the component model's canonical ABI for the
;; world `plugin` in wit/filter.wit (`gateway plugin new` put a copy here). Values that do not fit in one result
;; are returned through memory: `header` writes an option<list<u8>> at a
;; pointer we pass, and each export returns a pointer to its answer.
(module
  (import "gateway:filter/types@0.1.0" "[method]request.header"
    (func $header (param $req i32) (param $name i32) (param $len i32) (param $out i32)))
  ;; A borrowed handle must be dropped before the call that lent it returns.
  (import "gateway:filter/types@0.1.0" "[resource-drop]request"
    (func $drop_request (param i32)))
  (import "gateway:filter/types@0.1.0" "[resource-drop]response"
    (func $drop_response (param i32)))

  (memory (export "memory") 1)

  (data (i32.const 16) "user-agent")
  (data (i32.const 32) "a User-Agent header is required\n")
  (data (i32.const 64) "content-type")
  (data (i32.const 80) "text/plain")
  ;; The reply's headers: one (name, value) pair, each a pointer and a length.
  (data (i32.const 96) "\40\00\00\00\0c\00\00\00\50\00\00\00\0a\00\00\00")
  (data (i32.const 112) "this filter takes no settings")

  ;; Where the host copies a header's value: a bump allocator from 1024,
  ;; reset at each call since nothing outlives one.
  (global $heap (mut i32) (i32.const 1024))

  (func (export "cabi_realloc")
    (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $ptr i32) (local $end i32) (local $have i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u
                  (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 0xffff))
                  (i32.const 16)))
              (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (if (local.get $old)
      (then
        (memory.copy (local.get $ptr) (local.get $old)
          (select (local.get $old_size) (local.get $size)
            (i32.lt_u (local.get $old_size) (local.get $size))))))
    (local.get $ptr))

  ;; configure: result<_, string> at 320. Only an empty table, `{}`, is ok.
  (func (export "gateway:filter/filter@0.1.0#configure")
    (param $config i32) (param $len i32) (result i32)
    (if (i32.and
          (i32.eq (local.get $len) (i32.const 2))
          (i32.eq (i32.load16_u (local.get $config)) (i32.const 0x7d7b)))
      (then (i32.store8 (i32.const 320) (i32.const 0)))
      (else
        (i32.store8 (i32.const 320) (i32.const 1))
        (i32.store (i32.const 324) (i32.const 112))
        (i32.store (i32.const 328) (i32.const 29))))
    (i32.const 320))

  ;; on-request: an action at 288. Tag 0 is continue; tag 1 is respond,
  ;; with the reply from offset 4: status, headers (pointer, count), body
  ;; (pointer, length).
  (func (export "gateway:filter/filter@0.1.0#on-request") (param $req i32) (result i32)
    (global.set $heap (i32.const 1024))
    (call $header (local.get $req) (i32.const 16) (i32.const 10) (i32.const 256))
    (call $drop_request (local.get $req))
    (if (i32.load8_u (i32.const 256))
      (then (i32.store8 (i32.const 288) (i32.const 0)))
      (else
        (i32.store8 (i32.const 288) (i32.const 1))
        (i32.store16 (i32.const 292) (i32.const 403))
        (i32.store (i32.const 296) (i32.const 96))
        (i32.store (i32.const 300) (i32.const 1))
        (i32.store (i32.const 304) (i32.const 32))
        (i32.store (i32.const 308) (i32.const 32))))
    (i32.const 288))

  (func (export "gateway:filter/filter@0.1.0#on-response")
    (param $req i32) (param $resp i32) (result i32)
    (call $drop_request (local.get $req))
    (call $drop_response (local.get $resp))
    (i32.store8 (i32.const 288) (i32.const 0))
    (i32.const 288))
)
