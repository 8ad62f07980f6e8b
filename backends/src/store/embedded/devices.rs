//! `DeviceRegistry` on the embedded store: `user_devices` (devices by user) and
//! `device_tokens` (the one owner of each token), written together in the writer's
//! transactions so that a token is never held by two users.

use async_trait::async_trait;
use esh_common::{Device, Millis, Platform};
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::engine::{corrupt, Failure};
use super::EmbeddedMessageStore;
use crate::devices::{DeviceOutcome, DeviceRegistry, Registered};
use crate::error::BackendError;

const COLUMNS: &str = "user_id, token, platform, active, failures, created_at";

fn device_from_row(row: &Row<'_>) -> Result<Device, Failure> {
    let platform: String = row.get(2)?;
    Ok(Device {
        user_id: row.get(0)?,
        token: row.get(1)?,
        platform: Platform::parse(&platform).ok_or_else(|| corrupt(format!("unknown platform {platform:?}")))?,
        active: row.get(3)?,
        failures: row.get(4)?,
        created_at: Millis(row.get(5)?),
    })
}

fn device(connection: &Connection, user_id: &str, token: &str) -> Result<Option<Device>, Failure> {
    let mut statement =
        connection.prepare_cached(&format!("SELECT {COLUMNS} FROM user_devices WHERE user_id = ?1 AND token = ?2"))?;
    let mut rows = statement.query([user_id, token])?;
    rows.next()?.map(device_from_row).transpose()
}

fn devices(connection: &Connection, user_id: &str) -> Result<Vec<Device>, Failure> {
    let mut statement =
        connection.prepare_cached(&format!("SELECT {COLUMNS} FROM user_devices WHERE user_id = ?1 ORDER BY token"))?;
    let mut rows = statement.query([user_id])?;
    let mut found = Vec::new();
    while let Some(row) = rows.next()? {
        found.push(device_from_row(row)?);
    }
    Ok(found)
}

fn owner(connection: &Connection, token: &str) -> Result<Option<String>, Failure> {
    Ok(connection
        .prepare_cached("SELECT user_id FROM device_tokens WHERE token = ?1")?
        .query_row([token], |row| row.get(0))
        .optional()?)
}

fn put(connection: &Connection, device: &Device) -> Result<(), Failure> {
    connection
        .prepare_cached(&format!("INSERT OR REPLACE INTO user_devices ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"))?
        .execute(params![
            device.user_id,
            device.token,
            device.platform.as_str(),
            device.active,
            device.failures,
            device.created_at.0
        ])?;
    connection
        .prepare_cached("INSERT OR REPLACE INTO device_tokens (token, user_id) VALUES (?1, ?2)")?
        .execute(params![device.token, device.user_id])?;
    Ok(())
}

fn register(
    connection: &Connection,
    user_id: &str,
    platform: Platform,
    token: &str,
    now: Millis,
    max_devices: usize,
) -> Result<Registered, Failure> {
    if let Some(mut existing) = device(connection, user_id, token)? {
        existing.platform = platform;
        existing.active = true;
        existing.failures = 0;
        put(connection, &existing)?;
        return Ok(Registered { device: existing, created: false });
    }
    let held: i64 = connection
        .prepare_cached("SELECT count(*) FROM user_devices WHERE user_id = ?1")?
        .query_row([user_id], |row| row.get(0))?;
    if usize::try_from(held).unwrap_or(usize::MAX) >= max_devices {
        return Err(Failure(BackendError::Conflict(format!("a user may register at most {max_devices} devices"))));
    }
    if let Some(previous) = owner(connection, token)? {
        connection
            .prepare_cached("DELETE FROM user_devices WHERE user_id = ?1 AND token = ?2")?
            .execute([previous.as_str(), token])?;
    }
    let device = Device {
        user_id: user_id.to_owned(),
        platform,
        token: token.to_owned(),
        active: true,
        failures: 0,
        created_at: now,
    };
    put(connection, &device)?;
    Ok(Registered { device, created: true })
}

fn remove(connection: &Connection, user_id: &str, token: &str) -> Result<bool, Failure> {
    let removed = connection
        .prepare_cached("DELETE FROM user_devices WHERE user_id = ?1 AND token = ?2")?
        .execute([user_id, token])?;
    if removed > 0 {
        connection
            .prepare_cached("DELETE FROM device_tokens WHERE token = ?1 AND user_id = ?2")?
            .execute([token, user_id])?;
    }
    Ok(removed > 0)
}

fn record_outcomes(
    connection: &Connection,
    outcomes: &[(Device, DeviceOutcome)],
    strikes: u32,
) -> Result<Vec<Device>, Failure> {
    let mut changed = Vec::with_capacity(outcomes.len());
    for (target, outcome) in outcomes {
        let Some(mut device) = device(connection, &target.user_id, &target.token)? else { continue };
        match outcome {
            DeviceOutcome::Accepted => device.failures = 0,
            DeviceOutcome::Failed => {
                device.failures = device.failures.saturating_add(1);
                if device.failures >= strikes {
                    device.active = false;
                }
            }
            DeviceOutcome::Unregistered => device.active = false,
        }
        put(connection, &device)?;
        changed.push(device);
    }
    Ok(changed)
}

#[async_trait]
impl DeviceRegistry for EmbeddedMessageStore {
    async fn register(
        &self,
        user_id: &str,
        platform: Platform,
        token: &str,
        now: Millis,
        max_devices: usize,
    ) -> Result<Registered, BackendError> {
        let (user_id, token) = (user_id.to_owned(), token.to_owned());
        self.writer.write(1, move |connection| register(connection, &user_id, platform, &token, now, max_devices)).await
    }

    async fn devices(&self, user_id: &str) -> Result<Vec<Device>, BackendError> {
        let user_id = user_id.to_owned();
        self.readers.read(move |connection| devices(connection, &user_id)).await
    }

    async fn remove(&self, user_id: &str, token: &str) -> Result<bool, BackendError> {
        let (user_id, token) = (user_id.to_owned(), token.to_owned());
        self.writer.write(1, move |connection| remove(connection, &user_id, &token)).await
    }

    async fn record_outcomes(
        &self,
        outcomes: &[(Device, DeviceOutcome)],
        strikes: u32,
    ) -> Result<Vec<Device>, BackendError> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let outcomes = outcomes.to_vec();
        self.writer.write(outcomes.len(), move |connection| record_outcomes(connection, &outcomes, strikes)).await
    }
}
