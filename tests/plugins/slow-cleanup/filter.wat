;; Test filter for post-return deadlines. `on-request` works for 600 ms of
;; wall-clock time and continues; its post-return cleanup does as much work
;; again (a cleanup may not call the host, so it repeats the number of
;; loop rounds the call counted in its 600 ms). `on-response` continues at
;; once and its cleanup never ends. With a 1 s timeout the request phase
;; passes only if cleanup is not charged to the call's deadline, and the
;; response phase fails only if cleanup is bounded on its own.
(module
  (import "gateway:filter/host@0.1.0" "monotonic-ns" (func $now (result i64)))
  (import "gateway:filter/types@0.1.0" "[resource-drop]request"
    (func $drop_request (param i32)))
  (import "gateway:filter/types@0.1.0" "[resource-drop]response"
    (func $drop_response (param i32)))

  (memory (export "memory") 1)

  ;; Rounds of `$round` the last `on-request` ran.
  (global $rounds (mut i64) (i64.const 0))

  (func $round
    (local $i i32)
    (local.set $i (i32.const 100000))
    (loop $again
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $again (local.get $i))))

  ;; Only `configure`'s small JSON is ever copied in.
  (func (export "cabi_realloc")
    (param i32) (param i32) (param i32) (param i32) (result i32)
    (i32.const 1024))

  (func (export "gateway:filter/filter@0.1.0#configure")
    (param i32) (param i32) (result i32)
    (i32.store8 (i32.const 320) (i32.const 0))
    (i32.const 320))

  (func (export "gateway:filter/filter@0.1.0#on-request") (param $req i32) (result i32)
    (local $until i64)
    (local $n i64)
    (call $drop_request (local.get $req))
    (local.set $until (i64.add (call $now) (i64.const 600000000)))
    (loop $again
      (call $round)
      (local.set $n (i64.add (local.get $n) (i64.const 1)))
      (br_if $again (i64.lt_u (call $now) (local.get $until))))
    (global.set $rounds (local.get $n))
    (i32.store8 (i32.const 288) (i32.const 0))
    (i32.const 288))

  (func (export "cabi_post_gateway:filter/filter@0.1.0#on-request") (param i32)
    (local $n i64)
    (local.set $n (global.get $rounds))
    (loop $again
      (call $round)
      (local.set $n (i64.sub (local.get $n) (i64.const 1)))
      (br_if $again (i64.gt_s (local.get $n) (i64.const 0)))))

  (func (export "gateway:filter/filter@0.1.0#on-response")
    (param $req i32) (param $resp i32) (result i32)
    (call $drop_request (local.get $req))
    (call $drop_response (local.get $resp))
    (i32.store8 (i32.const 288) (i32.const 0))
    (i32.const 288))

  (func (export "cabi_post_gateway:filter/filter@0.1.0#on-response") (param i32)
    (loop $forever (br $forever)))
)
