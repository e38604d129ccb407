//! Fair shares of the fetch queue: how many videos each waiting job may hand out in one
//! dispatch round. Projects share the round equally (round-robin, so a small batch waits
//! behind no project's whole backlog: a new project's first batch goes out in the next
//! round, and a project's turn comes back after at most one message of each other waiting
//! project); a share a project cannot use goes to the others. Within a project, the job with the fewest videos left goes first, so a small
//! batch does not wait behind the project's own large ones either, while the large ones are
//! served one after the other rather than all at once (which would make every group commit
//! update every job's counter row). For the same reason a round gives out whole messages:
//! when the budget is too small for every project to get a message's worth, the projects
//! first in line get a message's worth each (or what they want) and the others come first
//! in the next round, rather than every project getting a video or two (each message would
//! then carry the videos of 32 jobs, and each group commit count them on 32 job rows, which
//! every worker's groups wait on). Pure, so the rule is tested here and nowhere else.

/// One job waiting for dispatch, as the fair share sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand<K> {
    pub project: i64,
    /// When the job was last served; smaller goes first when the round is too small to give
    /// everyone a message's worth (`None`, never served, is smallest).
    pub served: K,
    /// Videos it still has to hand out.
    pub remaining: u32,
}

/// How many videos each of `demands` may hand out this round, out of `budget`, a project's
/// share at least `unit` videos (a message's worth) unless it wants fewer. A project's place
/// in line is that of its most recently served job, so a project that was just served waits
/// for the others when videos are scarce.
pub fn allocate<K: Ord + Copy>(budget: u32, unit: u32, demands: &[Demand<K>]) -> Vec<u32> {
    // Projects in line order, each with its jobs (indexes into `demands`, in their order).
    let mut projects: Vec<(i64, K, Vec<usize>)> = Vec::new();
    for (i, d) in demands.iter().enumerate() {
        match projects.iter_mut().find(|(p, _, _)| *p == d.project) {
            Some((_, served, jobs)) => {
                *served = (*served).max(d.served);
                jobs.push(i);
            }
            None => projects.push((d.project, d.served, vec![i])),
        }
    }
    projects.sort_by_key(|(_, served, _)| *served);
    let wanted: Vec<u32> = projects
        .iter()
        .map(|(_, _, jobs)| {
            jobs.iter()
                .map(|&i| demands[i].remaining)
                .fold(0u32, u32::saturating_add)
        })
        .collect();
    let mut takes = vec![0; demands.len()];
    for ((_, _, jobs), share) in projects.iter_mut().zip(water_fill(budget, unit, &wanted)) {
        // Fewest left first; the sort is stable, so equal jobs keep their line order.
        jobs.sort_by_key(|&i| demands[i].remaining);
        let mut left = share;
        for &i in jobs.iter() {
            takes[i] = left.min(demands[i].remaining);
            left -= takes[i];
        }
    }
    takes
}

/// Splits `budget` equally between `wanted`, giving what one cannot use to the others; when
/// there is less than `unit` each, the first in line get `unit` (or what is left).
fn water_fill(budget: u32, unit: u32, wanted: &[u32]) -> Vec<u32> {
    let mut given = vec![0u32; wanted.len()];
    let mut left = budget;
    loop {
        let open: Vec<usize> = (0..wanted.len())
            .filter(|&i| given[i] < wanted[i])
            .collect();
        if open.is_empty() || left == 0 {
            return given;
        }
        let share = (left / open.len() as u32).max(unit.max(1));
        for i in open {
            let take = share.min(wanted[i] - given[i]).min(left);
            given[i] += take;
            left -= take;
            if left == 0 {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(project: i64, served: u32, remaining: u32) -> Demand<u32> {
        Demand {
            project,
            served,
            remaining,
        }
    }

    #[test]
    fn one_job_takes_the_budget_up_to_what_it_has() {
        assert_eq!(allocate(100, 1, &[job(1, 0, 1000)]), vec![100]);
        assert_eq!(allocate(100, 1, &[job(1, 0, 30)]), vec![30]);
        assert_eq!(allocate(0, 1, &[job(1, 0, 30)]), vec![0]);
        assert_eq!(allocate(100, 1, &[] as &[Demand<u32>]), Vec::<u32>::new());
    }

    #[test]
    fn a_small_project_gets_all_it_wants_beside_a_large_one() {
        // Project 1 has 100,000 queued, project 2 posts 5: 2 gets its 5 this round.
        let takes = allocate(512, 32, &[job(1, 3, 100_000), job(2, 0, 5)]);
        assert_eq!(takes, vec![507, 5]);
    }

    #[test]
    fn projects_share_equally_whatever_their_number_of_jobs() {
        // Project 1 has three jobs, project 2 one: each project gets half.
        let demands = [
            job(1, 1, 1000),
            job(1, 1, 1000),
            job(1, 1, 1000),
            job(2, 1, 1000),
        ];
        let takes = allocate(300, 32, &demands);
        assert_eq!(takes[3], 150);
        // Within the project, one large job after the other.
        assert_eq!(takes[..3], [150, 0, 0]);
    }

    #[test]
    fn within_a_project_the_smallest_job_goes_first() {
        // A project's 5-video batch posted behind its own 1,000-video ones.
        let demands = [job(1, 1, 1000), job(1, 1, 900), job(1, 0, 5)];
        assert_eq!(allocate(100, 32, &demands), vec![0, 95, 5]);
        assert_eq!(allocate(3, 32, &demands), vec![0, 0, 3]);
    }

    #[test]
    fn a_scarce_round_goes_to_the_least_recently_served_project() {
        // One video for three projects: the one served longest ago gets it, whichever order
        // the jobs came in; project 1 counts as served at 9 (its newest job).
        let demands = [job(1, 1, 10), job(2, 5, 10), job(3, 2, 10), job(1, 9, 10)];
        assert_eq!(allocate(1, 1, &demands), vec![0, 0, 1, 0]);
        assert_eq!(allocate(2, 1, &demands), vec![0, 1, 1, 0]);
    }

    #[test]
    fn a_round_too_small_for_everyone_gives_whole_messages_to_the_first_in_line() {
        // 100 projects, 128 videos: four get a message of 32 each (the least recently
        // served), not every project one or two videos.
        let demands: Vec<Demand<u32>> = (0..100).map(|p| job(p, 100 - p as u32, 200)).collect();
        let takes = allocate(128, 32, &demands);
        let served: Vec<(usize, u32)> = takes
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, t)| *t > 0)
            .collect();
        assert_eq!(served, [(96, 32), (97, 32), (98, 32), (99, 32)]);
        // A project wanting less than a message takes what it wants; the rest goes on.
        let demands = [job(1, 0, 5), job(2, 1, 1000), job(3, 2, 1000)];
        assert_eq!(allocate(40, 32, &demands), vec![5, 32, 3]);
        // Less than a message in all: the first in line takes it; no unit is one video.
        let two = [job(1, 0, 1000), job(2, 1, 1000)];
        assert_eq!(allocate(16, 32, &two), vec![16, 0]);
        assert_eq!(allocate(16, 0, &two), allocate(16, 1, &two));
        assert_eq!(allocate(16, 1, &two), vec![8, 8]);
        // Enough for everyone's message: shared equally, and what one cannot use goes to
        // the others, a message's worth at a time.
        assert_eq!(allocate(96, 32, &demands), vec![5, 59, 32]);
        assert_eq!(allocate(200, 32, &demands), vec![5, 98, 97]);
    }

    #[test]
    fn never_more_than_the_budget_or_than_wanted() {
        for (budget, unit) in [0, 1, 7, 100, 513]
            .into_iter()
            .flat_map(|b| [(b, 1), (b, 32)])
        {
            let demands = [job(1, 0, 3), job(2, 4, 250), job(2, 1, 1), job(3, 2, 90)];
            let takes = allocate(budget, unit, &demands);
            let total: u32 = takes.iter().sum();
            let wanted: u32 = demands.iter().map(|d| d.remaining).sum();
            assert_eq!(total, budget.min(wanted), "budget {budget}: {takes:?}");
            for (take, d) in takes.iter().zip(&demands) {
                assert!(*take <= d.remaining);
            }
        }
    }
}
