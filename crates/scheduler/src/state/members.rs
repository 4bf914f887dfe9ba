//! Membership: registration, lease renewal and expiry (requeueing what a dead member held), and
//! the shard map over the live ps-servers.

use std::time::Instant;

use super::{ItemStatus, Member, Role, SchedulerError, State};

impl State {
    /// Registers a member; returns its id.
    pub fn register(&mut self, role: Role, address: String, now: Instant) -> String {
        self.expire(now);
        let prefix = if role == Role::Ps { "ps" } else { "worker" };
        let id = format!("{prefix}-{}", self.next_member);
        self.next_member += 1;
        if role == Role::Ps && !self.ps_order.contains(&address) {
            self.ps_order.push(address.clone());
            self.map_version += 1;
        }
        self.members.insert(id.clone(), Member { role, address, expires: now + self.lease });
        id
    }

    /// Renews a lease; returns the shard map version.
    pub fn heartbeat(&mut self, member: &str, now: Instant) -> Result<u64, SchedulerError> {
        self.expire(now);
        let m = self.members.get_mut(member).ok_or_else(|| SchedulerError::UnknownMember(member.into()))?;
        m.expires = now + self.lease;
        Ok(self.map_version)
    }

    /// Forgets members whose lease ran out and requeues their items.
    pub fn expire(&mut self, now: Instant) {
        let dead: Vec<String> =
            self.members.iter().filter(|(_, m)| m.expires < now).map(|(id, _)| id.clone()).collect();
        for id in dead {
            if let Some(m) = self.members.remove(&id) {
                if m.role == Role::Ps {
                    tracing::warn!(member = %id, address = %m.address, "ps-server lease expired; its slots wait for it to come back");
                } else {
                    tracing::warn!(member = %id, address = %m.address, "lease expired");
                }
            }
            for job in self.persisted.jobs.values_mut() {
                let held: Vec<usize> = (0..job.items.len())
                    .filter(|i| {
                        let item = &job.items[*i];
                        item.status == ItemStatus::Assigned && item.holder.as_deref() == Some(id.as_str())
                    })
                    .collect();
                for index in held {
                    job.requeue(index);
                }
            }
        }
    }

    /// (version, endpoints, owner of each slot).
    pub fn shard_map(&self) -> (u64, Vec<String>, Vec<u32>) {
        let endpoints = self.ps_order.clone();
        let n = endpoints.len().max(1) as u32;
        let owners = if endpoints.is_empty() { Vec::new() } else { (0..self.num_slots).map(|s| s % n).collect() };
        (self.map_version, endpoints, owners)
    }
}
