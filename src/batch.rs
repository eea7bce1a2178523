//! The items of one Revoke call and the queued jobs each one settles.

use std::collections::HashMap;

use crate::job::{JobId, JobRow, Revocation};

/// One revocation in a call, and the queued jobs (duplicates) it settles.
#[derive(Debug)]
pub struct Item {
    pub revocation: Revocation,
    pub jobs: Vec<JobRow>,
}

/// The items of one Revoke call.
#[derive(Debug, Default)]
pub struct Batch {
    pub items: Vec<Item>,
}

impl Batch {
    /// Group valid rows by what they revoke, so duplicates share one item.
    pub fn from_rows(rows: impl IntoIterator<Item = (JobRow, Revocation)>) -> Self {
        let rows = rows.into_iter();
        let (expected, _) = rows.size_hint();
        let mut index: HashMap<Revocation, usize> = HashMap::with_capacity(expected);
        let mut items: Vec<Item> = Vec::with_capacity(expected);
        for (row, revocation) in rows {
            match index.get(&revocation) {
                Some(&at) => items[at].jobs.push(row),
                None => {
                    index.insert(revocation.clone(), items.len());
                    items.push(Item {
                        revocation,
                        jobs: vec![row],
                    });
                }
            }
        }
        Self { items }
    }

    pub fn revocations(&self) -> Vec<&Revocation> {
        self.items.iter().map(|item| &item.revocation).collect()
    }

    pub fn jobs(&self) -> impl Iterator<Item = &JobRow> {
        self.items.iter().flat_map(|item| &item.jobs)
    }

    pub fn job_ids(&self) -> Vec<JobId> {
        self.jobs().map(|job| job.id).collect()
    }

    pub fn job_count(&self) -> usize {
        self.items.iter().map(|item| item.jobs.len()).sum()
    }

    /// The attempt this call is for its most-tried job (1-based).
    pub fn attempt(&self) -> u32 {
        self.jobs().map(|job| job.attempts + 1).max().unwrap_or(1)
    }

    /// Two halves (by item), for isolating an item the server refuses.
    pub fn split(mut self) -> (Batch, Batch) {
        let back = self.items.split_off(self.items.len() / 2);
        (self, Batch { items: back })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: JobId, lead: &str) -> JobRow {
        JobRow {
            id,
            user_id: "0203f172-8642-11e7-9bed-069b743e848f".into(),
            entity_id: lead.into(),
            context_entity_id: "9a0e8f2c-1b7d-4c55-8f5e-2b8d6f0c1a11".into(),
            access_type: "1".into(),
            attempts: 0,
            created_at: None,
        }
    }

    fn batch(rows: Vec<JobRow>) -> Batch {
        Batch::from_rows(rows.into_iter().map(|row| {
            let revocation = row.revocation().expect("valid");
            (row, revocation)
        }))
    }

    #[test]
    fn duplicates_share_an_item_and_halves_keep_every_job() {
        let batch = batch(vec![
            row(1, "7"),
            row(2, "8"),
            row(3, "7"),
            row(4, "9"),
            row(5, "10"),
        ]);
        assert_eq!(batch.items.len(), 4);
        assert_eq!(batch.job_count(), 5);
        let (front, back) = batch.split();
        assert_eq!((front.items.len(), back.items.len()), (2, 2));
        let mut ids = [front.job_ids(), back.job_ids()].concat();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
    }
}
