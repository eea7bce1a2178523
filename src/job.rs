//! A queued revocation: the row as producers wrote it, and the checked form the API receives.
//!
//! Rows come from other systems and may be malformed. Each is parsed into a [`Revocation`],
//! a type that cannot hold an invalid value, before it can reach a Revoke call; a row that does
//! not parse ends `failed` with the reason, and never blocks the rows around it.

use std::fmt;

use uuid::Uuid;

/// A job's primary key in `revocation_jobs`.
pub type JobId = i64;

/// The lifecycle of a row: `pending → in_flight → submitted → completed | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Pending,
    InFlight,
    Submitted,
    Completed,
    Failed,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::InFlight,
        Status::Submitted,
        Status::Completed,
        Status::Failed,
    ];

    /// The text stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InFlight => "in_flight",
            Status::Submitted => "submitted",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row as claimed from the table, unchecked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: JobId,
    pub user_id: String,
    pub entity_id: String,
    pub context_entity_id: String,
    /// As text, so that whatever a producer stored can be reported back.
    pub access_type: String,
    /// Calls already made for this job (not counting the one about to be made).
    pub attempts: u32,
    /// Unix ms of the insert, when the producer left the default (for latency metrics).
    pub created_at: Option<i64>,
}

/// Read (1, the API's default) or write (2) access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessType {
    Read = 1,
    Write = 2,
}

/// One revocation that is valid per the API's specification: revoke `access` of `user` to
/// `lead`, as shared in the context of `activity`. Never "all access": the lead stays shared
/// through any other activity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Revocation {
    pub user: Uuid,
    pub lead: LeadId,
    pub activity: Uuid,
    pub access: AccessType,
}

/// A lead's ProspectAutoId: non-empty, trimmed, printable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeadId(String);

impl LeadId {
    const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a row cannot be sent, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidJob {
    #[error("user_id {0:?} is not a GUID (expected the form 0203f172-8642-11e7-9bed-069b743e848f)")]
    UserId(String),
    #[error(
        "context_entity_id {0:?} is not a GUID (expected the activity Id, like 0203f172-8642-11e7-9bed-069b743e848f)"
    )]
    ActivityId(String),
    #[error("entity_id is empty (expected the lead's ProspectAutoId, like \"869196\")")]
    EmptyLeadId,
    #[error(
        "entity_id {0:?} is not a ProspectAutoId (no surrounding spaces or control characters, at most 64 characters)"
    )]
    LeadId(String),
    #[error("access_type {0:?} is not 1 (read) or 2 (write)")]
    AccessType(String),
}

impl JobRow {
    /// Check every field the API will see; the first problem found is the reason given.
    pub fn revocation(&self) -> Result<Revocation, InvalidJob> {
        Ok(Revocation {
            user: parse_guid(&self.user_id)
                .ok_or_else(|| InvalidJob::UserId(self.user_id.clone()))?,
            lead: parse_lead(&self.entity_id)?,
            activity: parse_guid(&self.context_entity_id)
                .ok_or_else(|| InvalidJob::ActivityId(self.context_entity_id.clone()))?,
            access: match self.access_type.as_str() {
                "1" => AccessType::Read,
                "2" => AccessType::Write,
                other => return Err(InvalidJob::AccessType(other.to_owned())),
            },
        })
    }
}

/// Only the hyphenated 8-4-4-4-12 form, which is what LeadSquared documents and returns.
fn parse_guid(text: &str) -> Option<Uuid> {
    (text.len() == 36)
        .then(|| Uuid::try_parse(text).ok())
        .flatten()
}

fn parse_lead(text: &str) -> Result<LeadId, InvalidJob> {
    if text.is_empty() {
        return Err(InvalidJob::EmptyLeadId);
    }
    let printable = text.chars().all(|c| !c.is_control());
    if text.trim() != text || !printable || text.len() > LeadId::MAX_LEN {
        return Err(InvalidJob::LeadId(text.to_owned()));
    }
    Ok(LeadId(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, lead: &str, activity: &str, access: u8) -> JobRow {
        JobRow {
            id: 1,
            user_id: user.into(),
            entity_id: lead.into(),
            context_entity_id: activity.into(),
            access_type: access.to_string(),
            attempts: 0,
            created_at: None,
        }
    }

    const USER: &str = "0203f172-8642-11e7-9bed-069b743e848f";
    const ACTIVITY: &str = "9a0e8f2c-1b7d-4c55-8f5e-2b8d6f0c1a11";

    #[test]
    fn a_well_formed_row_becomes_a_revocation() {
        let revocation = row(USER, "869196", ACTIVITY, 2)
            .revocation()
            .expect("valid");
        assert_eq!(revocation.user.to_string(), USER);
        assert_eq!(revocation.lead.as_str(), "869196");
        assert_eq!(revocation.access, AccessType::Write);
    }

    #[test]
    fn uppercase_guids_are_accepted_and_normalised() {
        let revocation = row(&USER.to_uppercase(), "1", ACTIVITY, 1)
            .revocation()
            .expect("valid");
        assert_eq!(revocation.user.to_string(), USER);
    }

    #[test]
    fn each_malformed_field_is_named() {
        let cases = [
            (row("not-a-guid", "1", ACTIVITY, 1), "user_id"),
            (row(&USER.replace('-', ""), "1", ACTIVITY, 1), "user_id"),
            (row(USER, "", ACTIVITY, 1), "entity_id is empty"),
            (row(USER, " 12", ACTIVITY, 1), "entity_id"),
            (
                row(USER, "1", "{9a0e8f2c-1b7d-4c55-8f5e-2b8d6f0c1a11}", 1),
                "context_entity_id",
            ),
            (row(USER, "1", ACTIVITY, 3), "access_type \"3\""),
        ];
        for (row, expected) in cases {
            let reason = row.revocation().expect_err("invalid").to_string();
            assert!(
                reason.contains(expected),
                "{reason:?} should name {expected:?}"
            );
        }
    }
}
