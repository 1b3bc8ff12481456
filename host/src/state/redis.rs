//! The Redis state backends, for counters shared by every gateway replica:
//! one Redis, or a Redis Cluster.
//!
//! Every call is one round trip: a Lua script increments each key, gives a
//! new key its expiry and reads the remaining time, atomically (Redis runs a
//! script alone). With one Redis, connections are multiplexed (many
//! requests in flight on each) and kept in a small set used in turn; each
//! one reconnects by itself. In a cluster, every key a filter uses carries
//! the filter's name as its hash tag (`{name}`), so a call's counters, its
//! quota index and its values sit in one slot and the script runs on one
//! node; the client keeps one multiplexed connection per node and follows
//! MOVED, ASK and failovers itself. The price is that one filter's keys
//! live on one shard: filters spread over the cluster, a filter's keys do
//! not. While Redis is unreachable, calls fail at once for a short pause
//! instead of each waiting out the timeout, and the filter's own policy
//! decides what a request gets.

use super::{Counter, CounterOp, KvAnswer, KvOp, Owner, QuotaLimit, StateError};
use crate::config::{StateBackend, StateConfig};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use std::borrow::Cow;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// After a failure, calls fail fast for this long before one tries again.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(200);

/// KEYS are the counters, then the filter's index: a sorted set of the
/// counters it holds, scored by expiry, which is how its quota is counted
/// (Redis drops expired counters itself, so the index is pruned by score).
/// ARGV[1] is the quota; then a (delta, window in ms) pair per counter.
/// Answers a flat list of (value, ttl in ms) pairs, or the error `QUOTA`
/// when the call would create counters past the quota, having changed
/// nothing. A zero delta only reads and creates nothing, as in the memory
/// backend.
const SCRIPT: &str = r#"
local n = #KEYS - 1
local index = KEYS[#KEYS]
local quota = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local new = 0
for i = 1, n do
  if tonumber(ARGV[2 * i]) ~= 0 and redis.call('EXISTS', KEYS[i]) == 0 then
    new = new + 1
  end
end
if new > 0 then
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  local held = redis.call('ZCARD', index)
  if held + new > quota then
    return redis.error_reply('QUOTA the filter holds ' .. held .. ' counters; its quota is ' .. quota .. ' (state_max_entries)')
  end
end
local out = {}
for i = 1, n do
  local key = KEYS[i]
  local delta = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  local value, ttl
  if delta == 0 then
    value = tonumber(redis.call('GET', key)) or 0
    ttl = redis.call('PTTL', key)
    if ttl < 0 then ttl = 0 end
  else
    value = redis.call('INCRBY', key, delta)
    ttl = redis.call('PTTL', key)
    if ttl < 0 then
      redis.call('PEXPIRE', key, window)
      ttl = window
      redis.call('ZADD', index, now + window, key)
      if redis.call('PTTL', index) < window then
        redis.call('PEXPIRE', index, window)
      end
    end
  end
  out[2 * i - 1] = value
  out[2 * i] = ttl
end
return out
"#;

/// One key-value call, atomically: KEYS are the value's key and the
/// filter's index (the one counters use, so values and counters share the
/// entry quota). ARGV: the operation (`get`, `set`, `del`, `cas`), the
/// quota, the lifetime in ms, the value, then for `cas` whether a value is
/// expected (`1`) and that value. `get` answers the value or nil; the rest
/// answer 1 (done) or 0, or the error `QUOTA`.
const KV_SCRIPT: &str = r#"
local key, index = KEYS[1], KEYS[2]
local op = ARGV[1]
if op == 'get' then
  return redis.call('GET', key)
end
if op == 'del' then
  redis.call('ZREM', index, key)
  return redis.call('DEL', key)
end
local cur = redis.call('GET', key)
if op == 'cas' then
  if ARGV[5] == '1' then
    if cur ~= ARGV[6] then return 0 end
  elseif cur then
    return 0
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
if not cur then
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  local held = redis.call('ZCARD', index)
  local quota = tonumber(ARGV[2])
  if held + 1 > quota then
    return redis.error_reply('QUOTA the filter holds ' .. held .. ' entries; its quota is ' .. quota .. ' (state_max_entries)')
  end
end
redis.call('SET', key, ARGV[4], 'PX', ttl)
redis.call('ZADD', index, now + ttl, key)
if redis.call('PTTL', index) < ttl then
  redis.call('PEXPIRE', index, ttl)
end
return 1
"#;

/// How calls reach Redis.
enum Link {
    /// One server: a few multiplexed connections, used in turn.
    Single(Vec<ConnectionManager>),
    /// A cluster: the client routes each call to its key's slot owner.
    Cluster(ClusterConnection),
}

pub struct RedisStore {
    config: StateConfig,
    /// Built on first use, inside the runtime the connections belong to.
    link: OnceLock<Result<Link, String>>,
    next: AtomicUsize,
    script: redis::Script,
    kv_script: redis::Script,
    /// Calls fail fast until this instant (ns since `epoch`); 0 when healthy.
    paused_until_ns: AtomicU64,
    epoch: Instant,
}

impl RedisStore {
    /// A store for the `redis` or `redis-cluster` backend of `config`.
    pub fn new(config: &StateConfig) -> RedisStore {
        RedisStore {
            config: config.clone(),
            link: OnceLock::new(),
            next: AtomicUsize::new(0),
            script: redis::Script::new(SCRIPT),
            kv_script: redis::Script::new(KV_SCRIPT),
            paused_until_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn link(&self) -> Result<&Link, StateError> {
        self.link
            .get_or_init(|| self.connect().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| StateError::Invalid(format!("redis: {e}")))
    }

    /// Connections that open on first use and reopen by themselves.
    fn connect(&self) -> redis::RedisResult<Link> {
        let cfg = &self.config;
        let timeout = cfg.timeout.0;
        let certificates = || redis::TlsCertificates {
            client_tls: None,
            root_cert: cfg.ca_pem.clone(),
        };
        if cfg.backend == StateBackend::RedisCluster {
            let mut builder =
                redis::cluster::ClusterClient::builder(cfg.nodes.iter().map(String::as_str))
                    // A failing call is not retried past the call's own
                    // deadline; the pause below takes over instead.
                    .retries(1)
                    .min_retry_wait(5)
                    .max_retry_wait(50);
            if let Some(user) = &cfg.username {
                builder = builder.username(user);
            }
            if let Some(password) = cfg.password() {
                builder = builder.password(password);
            }
            if cfg.ca_pem.is_some() {
                builder = builder.certs(certificates());
            }
            let client = builder.build()?;
            let settings = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(timeout)
                .set_response_timeout(timeout);
            return Ok(Link::Cluster(
                client.get_pending_async_connection_with_config(settings),
            ));
        }
        let mut info =
            redis::IntoConnectionInfo::into_connection_info(cfg.url.as_deref().unwrap_or(""))?;
        let mut redis_settings = info.redis_settings().clone();
        if let Some(user) = &cfg.username {
            redis_settings = redis_settings.set_username(user);
        }
        if let Some(password) = cfg.password() {
            redis_settings = redis_settings.set_password(password);
        }
        info = info.set_redis_settings(redis_settings);
        let client = match cfg.ca_pem {
            Some(_) => redis::Client::build_with_tls(info, certificates())?,
            None => redis::Client::open(info)?,
        };
        let settings = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // One quick retry; beyond that the pause below takes over, so
            // a dead Redis costs requests nothing but a failed call.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(5))
            .set_max_delay(Duration::from_millis(50));
        (0..cfg.pool_size)
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), settings.clone()))
            .collect::<Result<_, _>>()
            .map(Link::Single)
    }

    /// Opens the connections and loads the scripts ahead of the first
    /// request, so it does not pay a connect, a TLS handshake and a script
    /// upload inside its filter's deadline. A Redis that is not there yet
    /// is only logged: calls connect by themselves when it comes.
    pub async fn warm(&self) {
        let Ok(link) = self.link() else { return };
        let loaded = async {
            match link {
                Link::Single(pool) => {
                    for conn in pool {
                        redis::cmd("PING")
                            .query_async::<()>(&mut conn.clone())
                            .await?;
                    }
                    let conn = &mut pool[0].clone();
                    self.script.load_async(conn).await?;
                    self.kv_script.load_async(conn).await?;
                }
                // SCRIPT LOAD goes to every node of a cluster.
                Link::Cluster(conn) => {
                    self.script.load_async(&mut conn.clone()).await?;
                    self.kv_script.load_async(&mut conn.clone()).await?;
                }
            }
            Ok::<_, redis::RedisError>(())
        };
        match tokio::time::timeout(Duration::from_secs(10), loaded).await {
            Ok(Ok(())) => tracing::info!("{} state backend connected", self.config.backend.label()),
            Ok(Err(e)) => tracing::warn!(
                "{} state backend not reachable at start ({e}); calls will connect when it is",
                self.config.backend.label()
            ),
            Err(_) => tracing::warn!(
                "{} state backend did not answer at start; calls will connect when it does",
                self.config.backend.label()
            ),
        }
    }

    /// Runs a prepared script on the connection whose turn it is.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        link: &Link,
        call: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        match link {
            Link::Single(pool) => {
                let conn = &pool[self.next.fetch_add(1, Ordering::Relaxed) % pool.len()];
                call.invoke_async(&mut conn.clone()).await
            }
            Link::Cluster(conn) => call.invoke_async(&mut conn.clone()).await,
        }
    }

    /// The filter's name as its keys carry it: in a cluster, as their hash
    /// tag, so all of them share a slot. (Filter names are letters, digits
    /// and `_`, so the tag is always the key's first `{...}`.)
    fn tag<'f>(&self, filter: &'f str) -> Cow<'f, str> {
        match self.config.backend {
            StateBackend::RedisCluster => Cow::Owned(format!("{{{filter}}}")),
            _ => Cow::Borrowed(filter),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    pub async fn add(&self, owner: &Owner, ops: &[CounterOp]) -> Result<Vec<Counter>, StateError> {
        let filter = self.tag(&owner.filter);
        let prefix = &self.config.prefix;
        self.check_pause()?;
        let link = self.link()?;
        let mut call = self.script.prepare_invoke();
        call.arg(owner.quota.max_entries);
        for op in ops {
            call.key(format!("{prefix}:{filter}:{}", op.key));
            call.arg(op.delta).arg(op.window.as_millis() as u64);
        }
        // `#` cannot follow the prefix in a counter's key (`prefix:filter:`),
        // so no filter's counter can be another's index.
        call.key(format!("{prefix}#quota:{filter}"));
        let attempt = async {
            let first = self.invoke::<Vec<i64>>(link, &call).await;
            match first {
                // A connection Redis dropped (a restart, say) is replaced as
                // soon as it fails; one retry on its replacement keeps a
                // recovered Redis from failing one call per pooled
                // connection. A dropped connection (unlike a slow answer)
                // rarely ran the script, so the retry seldom counts twice.
                Err(e) if e.is_connection_dropped() && !e.is_timeout() => {
                    self.invoke::<Vec<i64>>(link, &call).await
                }
                other => other,
            }
        };
        let values = self.answered(tokio::time::timeout(self.config.timeout.0, attempt).await)?;
        if values.len() != ops.len() * 2 {
            return Err(StateError::Invalid(format!(
                "redis answered {} values for {} counters",
                values.len(),
                ops.len()
            )));
        }
        Ok(values
            .chunks_exact(2)
            .map(|p| Counter {
                value: p[0],
                ttl_ms: p[1].max(0) as u64,
            })
            .collect())
    }

    /// One key-value call, in one round trip.
    pub async fn kv(&self, owner: &Owner, key: &str, op: &KvOp) -> Result<KvAnswer, StateError> {
        let filter = self.tag(&owner.filter);
        let prefix = &self.config.prefix;
        self.check_pause()?;
        let link = self.link()?;
        let mut call = self.kv_script.prepare_invoke();
        // `#kv:` after the prefix: no counter's key (`prefix:`) and no index
        // (`prefix#quota:`) can be a value's.
        call.key(format!("{prefix}#kv:{filter}:{key}"));
        call.key(format!("{prefix}#quota:{filter}"));
        let empty = bytes::Bytes::new();
        let (name, value, ttl, expected) = match op {
            KvOp::Get => ("get", &empty, 0, None),
            KvOp::Delete => ("del", &empty, 0, None),
            KvOp::Set { value, ttl } => ("set", value, ttl.as_millis() as u64, None),
            KvOp::CompareAndSet {
                expected,
                value,
                ttl,
            } => ("cas", value, ttl.as_millis() as u64, Some(expected)),
        };
        call.arg(name)
            .arg(owner.quota.max_entries)
            .arg(ttl)
            .arg(value.as_ref());
        match expected {
            Some(Some(e)) => call.arg("1").arg(e.as_ref()),
            _ => call.arg("0").arg(""),
        };
        // Not retried on a dropped connection as counters are: a set that
        // ran before the drop must not run twice under compare-and-set.
        let answer = tokio::time::timeout(
            self.config.timeout.0,
            self.invoke::<redis::Value>(link, &call),
        )
        .await;
        let value = self.answered(answer)?;
        match (op, value) {
            (KvOp::Get, redis::Value::Nil) => Ok(KvAnswer::Value(None)),
            (KvOp::Get, redis::Value::BulkString(b)) => Ok(KvAnswer::Value(Some(b.into()))),
            (_, redis::Value::Int(n)) => Ok(KvAnswer::Done(n > 0)),
            (_, other) => Err(StateError::Invalid(format!(
                "redis answered {other:?} to a key-value call"
            ))),
        }
    }

    /// A call's answer, or the error it stands for; a good answer ends a
    /// pause after failures.
    fn answered<T>(
        &self,
        answer: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, StateError> {
        let value = match answer {
            Ok(Ok(v)) => v,
            Ok(Err(e)) if e.code() == Some("QUOTA") => {
                return Err(StateError::Quota(
                    QuotaLimit::Entries,
                    e.detail().unwrap_or("over quota").to_string(),
                ));
            }
            Ok(Err(e)) if is_refusal(&e) => {
                return Err(StateError::Invalid(format!("redis refused the call: {e}")));
            }
            Ok(Err(e)) => return Err(self.unavailable(format!("redis: {e}"))),
            Err(_) => {
                return Err(self.unavailable(format!(
                    "redis did not answer within {} ms",
                    self.config.timeout.0.as_millis()
                )));
            }
        };
        if self.paused_until_ns.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("redis state backend answers again");
        }
        Ok(value)
    }

    /// Fails at once while a recent failure's pause lasts.
    fn check_pause(&self) -> Result<(), StateError> {
        let paused = self.paused_until_ns.load(Ordering::Relaxed);
        if paused != 0 && self.now_ns() < paused {
            return Err(StateError::Unavailable(
                "redis is unreachable; retrying shortly".into(),
            ));
        }
        Ok(())
    }

    fn unavailable(&self, why: String) -> StateError {
        self.paused_until_ns.store(
            self.now_ns() + PAUSE_AFTER_FAILURE.as_nanos() as u64,
            Ordering::Relaxed,
        );
        StateError::Unavailable(why)
    }
}

/// Errors that retrying cannot cure (a key holding a non-integer, a bad
/// script), as opposed to an outage, a failover or a loading replica
/// (LOADING, READONLY, MASTERDOWN, TRYAGAIN), which are unavailability.
fn is_refusal(e: &redis::RedisError) -> bool {
    matches!(e.retry_method(), redis::RetryMethod::NoRetry)
        && !(e.is_io_error() || e.is_timeout() || e.is_connection_refusal())
}
