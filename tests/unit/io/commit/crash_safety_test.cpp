// Crash safety in io/ without MPI: the save lock and its liveness rule, the restore of a
// replacement interrupted between its two renames, dead saves' leftovers, the overwrite rules
// (checked again at commit), run directories (latest, torn latest, rotation).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "core/error.h"
#include "io/commit/checkpoint_dir.h"
#include "io/commit/commit_journal.h"
#include "io/commit/run_dir.h"
#include "io/commit/save_lock.h"
#include "io/h5/manifest.h"
#include "tests/unit/temp_dir.h"

namespace shardload {
namespace {

namespace fs = std::filesystem;

using shardload::test_util::TempDir;

/// A directory that counts as a checkpoint: a manifest whose metadata says `marker`.
void make_checkpoint(const std::string& dir, const std::string& marker) {
  fs::create_directories(dir);
  Manifest m;
  m.metadata = {{"marker", marker}};
  write_manifest(dir, m);
}

std::string marker_of(const std::string& dir) { return read_manifest(dir).metadata.at(0).second; }

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

/// Entries of `dir` other than the listed ones.
std::set<std::string> entries(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

template <typename E, typename F>
std::string error_of(F&& body) {
  try {
    body();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "no exception of the expected kind";
  return "";
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

/// A lock record for `path` held by `owner`, its file's time set `age` seconds in the past.
void plant_lock(const std::string& path, const LockOwner& owner, int age = 0) {
  std::string file = lock_path_of(path);
  write_text(file, owner.to_text());
  if (age > 0) {
    struct timespec times[2];
    times[0].tv_sec = times[1].tv_sec = time(nullptr) - age;
    times[0].tv_nsec = times[1].tv_nsec = 0;
    utimensat(AT_FDCWD, file.c_str(), times, 0);
  }
}

/// The pid of a process that has exited (and been reaped).
int64_t dead_pid() {
  pid_t child = fork();
  if (child == 0) _exit(0);
  int status = 0;
  waitpid(child, &status, 0);
  return child;
}

TEST(SaveLock, ALiveHolderIsRefusedAndReleaseRemovesTheFile) {
  TempDir dir;
  std::string ckpt = dir.path() + "/ckpt";
  {
    auto lock = SaveLock::acquire(ckpt);
    EXPECT_TRUE(fs::exists(dir.path() + "/.ckpt.lock"));
    EXPECT_TRUE(lock->still_held());
    LockState holder;
    EXPECT_EQ(SaveLock::try_acquire(ckpt, &holder), nullptr);  // this very process: alive
    EXPECT_EQ(holder.owner.pid, getpid());
    std::string error = error_of<UsageError>([&] { SaveLock::acquire(ckpt); });
    EXPECT_TRUE(contains(error, ckpt + ": another save of this checkpoint is in progress"))
        << error;
    EXPECT_TRUE(contains(error, "pid " + std::to_string(getpid()))) << error;
  }
  EXPECT_TRUE(entries(dir.path()).empty());
}

TEST(SaveLock, DeadOwnersAreToldApartFromLiveOnes) {
  TempDir dir;
  std::string ckpt = dir.path() + "/ckpt";
  LockOwner me = LockOwner::current();
  auto alive = [&](const LockOwner& owner, int age = 0) {
    plant_lock(ckpt, owner, age);
    bool result = read_lock(ckpt).alive;
    fs::remove(lock_path_of(ckpt));
    return result;
  };
  EXPECT_TRUE(alive(me));
  LockOwner gone = me;
  gone.pid = dead_pid();
  EXPECT_FALSE(alive(gone)) << "a pid with no process";
  LockOwner reused = me;
  reused.start_ticks += 1;
  EXPECT_FALSE(alive(reused)) << "a live pid that started at another time (reused)";
  LockOwner rebooted = me;
  rebooted.boot_id = "another-boot";
  EXPECT_FALSE(alive(rebooted)) << "same host, rebooted since";
  LockOwner remote = me;
  remote.host = "some-other-host";
  remote.pid = 1;
  EXPECT_TRUE(alive(remote)) << "another host, refreshed just now";
  EXPECT_TRUE(alive(remote, kStaleLockSeconds - 60));
  EXPECT_FALSE(alive(remote, kStaleLockSeconds + 60)) << "another host, not refreshed for long";
  // A lock file that does not parse is alive while young (it may be being written), then dead.
  write_text(lock_path_of(ckpt), "garbage");
  EXPECT_TRUE(read_lock(ckpt).alive);
  fs::remove(lock_path_of(ckpt));
  write_text(lock_path_of(ckpt), "");
  struct timespec old[2] = {{time(nullptr) - kStaleLockSeconds - 60, 0},
                            {time(nullptr) - kStaleLockSeconds - 60, 0}};
  utimensat(AT_FDCWD, lock_path_of(ckpt).c_str(), old, 0);
  EXPECT_FALSE(read_lock(ckpt).alive);
}

TEST(SaveLock, ADeadOwnersLockIsBrokenAndSaysSo) {
  TempDir dir;
  std::string ckpt = dir.path() + "/ckpt";
  LockOwner gone = LockOwner::current();
  gone.pid = dead_pid();
  plant_lock(ckpt, gone);
  auto lock = SaveLock::acquire(ckpt);
  ASSERT_EQ(lock->notes().size(), 1u);
  EXPECT_TRUE(contains(lock->notes()[0],
                       "removed the lock of a dead save (pid " + std::to_string(gone.pid)))
      << lock->notes()[0];
  EXPECT_EQ(read_lock(ckpt).owner.id, lock->owner().id);
}

TEST(CheckpointStaging, DeadSavesLeftoversAreRemovedALiveSavesNeverTouched) {
  TempDir dir;
  std::string ckpt = dir.path() + "/ckpt";
  make_checkpoint(ckpt, "v1");
  // A dead save: its lock, its staging directory and a journal temporary.
  LockOwner gone = LockOwner::current();
  gone.pid = dead_pid();
  plant_lock(ckpt, gone);
  make_checkpoint(dir.path() + "/.ckpt.tmp-Dead01", "half");
  fs::create_directory(dir.path() + "/.ckpt.tmp-Dead02");
  // Look-alikes of other checkpoints are not this path's leftovers.
  fs::create_directory(dir.path() + "/.ckpt.tmp-x.tmp-Other1");
  fs::create_directory(dir.path() + "/.ckpt2.tmp-Other2");
  {
    CheckpointStaging staging(ckpt, true);
    std::string notes;
    for (const auto& n : staging.notes()) notes += n + "\n";
    EXPECT_TRUE(contains(notes, "removed the lock of a dead save")) << notes;
    EXPECT_TRUE(contains(notes, "removed 2 leftover(s) of dead saves")) << notes;
    EXPECT_FALSE(fs::exists(dir.path() + "/.ckpt.tmp-Dead01"));
    EXPECT_FALSE(fs::exists(dir.path() + "/.ckpt.tmp-Dead02"));
    EXPECT_TRUE(fs::exists(dir.path() + "/.ckpt.tmp-x.tmp-Other1"));
    EXPECT_TRUE(fs::exists(dir.path() + "/.ckpt2.tmp-Other2"));

    // While this save is live, a second save of the path is refused and touches nothing.
    std::string error = error_of<UsageError>([&] { CheckpointStaging second(ckpt, true); });
    EXPECT_TRUE(contains(error, "another save of this checkpoint is in progress")) << error;
    EXPECT_TRUE(fs::is_directory(staging.dir()));

    make_checkpoint(staging.dir(), "v2");
    staging.commit();
  }
  EXPECT_EQ(marker_of(ckpt), "v2");
  EXPECT_EQ(entries(dir.path()),
            (std::set<std::string>{"ckpt", ".ckpt.tmp-x.tmp-Other1", ".ckpt2.tmp-Other2"}));
}

TEST(CheckpointDir, OverwriteReplacesOnlyACheckpointOrAnEmptyDirectory) {
  TempDir dir;
  const std::string base = dir.path();
  auto refusal = [&](const std::string& path) {
    return error_of<UsageError>([&] { check_save_target(path, true); });
  };
  write_text(base + "/file", "x");
  EXPECT_TRUE(contains(refusal(base + "/file"), base + "/file: exists and is a file"));
  fs::create_directory(base + "/full");
  write_text(base + "/full/notes.txt", "mine");
  EXPECT_TRUE(contains(refusal(base + "/full"), "without manifest.h5 that is not empty"));
  make_checkpoint(base + "/elsewhere", "v1");
  fs::create_directory_symlink(base + "/elsewhere", base + "/link");
  EXPECT_TRUE(contains(refusal(base + "/link"), base + "/link: is a symbolic link"));
  fs::create_directory(base + "/empty");
  EXPECT_NO_THROW(check_save_target(base + "/empty", true));
  EXPECT_NO_THROW(check_save_target(base + "/elsewhere", true));
  EXPECT_TRUE(contains(error_of<UsageError>([&] { check_save_target(base + "/empty", false); }),
                       "already exists"));

  // Checked again at commit: a directory that filled up during the save is not replaced.
  for (bool fallback : {false, true}) {
    if (fallback) setenv("SHARDLOAD_RENAME", "fallback", 1);
    std::string target = base + (fallback ? "/target-fb" : "/target");
    fs::create_directory(target);
    std::string staging = make_staging_dir(target);
    make_checkpoint(staging, "new");
    write_text(target + "/appeared.txt", "user data");
    std::string error =
        error_of<UsageError>([&] { commit_staging_dir(staging, target, /*overwrite=*/true); });
    EXPECT_TRUE(contains(error, target + ": exists and is a directory without")) << error;
    EXPECT_TRUE(fs::exists(target + "/appeared.txt"));
    // ... and a path that appeared during a save without overwrite is not replaced either.
    fs::remove_all(target);
    fs::create_directory(target);
    error = error_of<UsageError>([&] { commit_staging_dir(staging, target, false); });
    EXPECT_TRUE(contains(error, target + ": already exists")) << error;
    // An empty directory is replaced, on both rename paths.
    EXPECT_NO_THROW(commit_staging_dir(staging, target, true));
    EXPECT_EQ(marker_of(target), "new");
    unsetenv("SHARDLOAD_RENAME");
  }
}

TEST(CheckpointDir, TheFallbackCommitLeavesOnlyTheNewCheckpoint) {
  TempDir dir;
  std::string ckpt = dir.path() + "/ckpt";
  make_checkpoint(ckpt, "v1");
  setenv("SHARDLOAD_RENAME", "fallback", 1);
  std::string staging = make_staging_dir(ckpt);
  make_checkpoint(staging, "v2");
  commit_staging_dir(staging, ckpt);
  unsetenv("SHARDLOAD_RENAME");
  EXPECT_EQ(marker_of(ckpt), "v2");
  EXPECT_EQ(entries(dir.path()), std::set<std::string>{"ckpt"});
}

/// The state a replacement without RENAME_EXCHANGE leaves when killed between its two renames.
struct Interrupted {
  std::string staging, aside;
  Interrupted(const std::string& dir, bool with_new, bool with_journal,
              const std::string& journal_text = "") {
    staging = dir + "/.ckpt.tmp-Abc123";
    aside = staging + ".old";
    make_checkpoint(aside, "old");
    if (with_new) make_checkpoint(staging, "new");
    if (with_journal) {
      write_text(dir + "/.ckpt.commit",
                 journal_text.empty() ? "shardload-commit-journal 1\ntarget=ckpt\nstaging=.ckpt."
                                        "tmp-Abc123\naside=.ckpt.tmp-Abc123.old\nowner=pid 1 on "
                                        "host h, since t\n"
                                      : journal_text);
    }
  }
};

TEST(RestoreInterruptedCommit, TheNewCheckpointWhenCompleteElseTheOld) {
  TempDir dir;
  std::string ckpt = dir.path() + "/ckpt";
  struct Case {
    bool with_new, with_journal;
    std::string journal, expected;
  };
  std::vector<Case> cases = {
      {true, true, "", "new"},
      {false, true, "", "old"},
      {true, false, "", "new"},  // no journal: an aside directory and no checkpoint at the path
      {true, true, "torn", "new"},
      // A hostile journal cannot point outside: it is ignored and the directory scanned.
      {false, true, "shardload-commit-journal 1\nstaging=../../etc\naside=../../etc.old\nowner=x\n",
       "old"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE("with_new=" + std::to_string(c.with_new) + " journal='" + c.journal + "'");
    Interrupted state(dir.path(), c.with_new, c.with_journal, c.journal);
    EXPECT_TRUE(needs_restore(ckpt));
    auto notes = restore_interrupted_commit(ckpt);
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_TRUE(contains(notes[0], ckpt + ": restored the " +
                                       (c.expected == "new" ? "new" : "previous") + " checkpoint"))
        << notes[0];
    EXPECT_EQ(marker_of(ckpt), c.expected);
    EXPECT_FALSE(needs_restore(ckpt));
    EXPECT_EQ(entries(dir.path()), std::set<std::string>{"ckpt"});
    fs::remove_all(ckpt);
  }
  // A checkpoint at the path stays; what the journal names is a dead save's leftover.
  make_checkpoint(ckpt, "current");
  Interrupted state(dir.path(), true, true);
  EXPECT_FALSE(needs_restore(ckpt));
  EXPECT_TRUE(restore_interrupted_commit(ckpt).empty());
  EXPECT_EQ(remove_dead_leftovers(ckpt).size(), 1u);
  EXPECT_EQ(marker_of(ckpt), "current");
  EXPECT_EQ(entries(dir.path()), std::set<std::string>{"ckpt"});
}

TEST(RunDir, LatestIsPublishedAfterTheCheckpointAndOldStepsRotate) {
  TempDir dir;
  std::string root = dir.path() + "/run";
  for (int step : {1, 2, 3, 4, 5}) {
    std::string ckpt = prepare_run_dir(root, step);
    EXPECT_EQ(ckpt, root + "/step-" + std::to_string(step));
    make_checkpoint(ckpt, "s" + std::to_string(step));
    auto notes = publish_step(root, step, 0);
    EXPECT_TRUE(notes.empty());
    ResolvedCheckpoint r = resolve_checkpoint(root);
    EXPECT_EQ(r.path, ckpt);
    EXPECT_EQ(marker_of(r.path), "s" + std::to_string(step));
  }
  // Restarted from step 2 and saved it again: latest names step-2, which is never rotated out.
  auto notes = publish_step(root, 2, 2);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_EQ(notes[0], root + ": removed step-3 step-1 (keeping the last 2)");
  EXPECT_EQ(entries(root), (std::set<std::string>{"latest", "step-2", "step-4", "step-5"}));
  EXPECT_EQ(resolve_checkpoint(root).path, root + "/step-2");
  // A checkpoint given directly is itself; a root that is a checkpoint is no run directory.
  EXPECT_EQ(resolve_checkpoint(root + "/step-4").path, root + "/step-4");
  EXPECT_THROW(prepare_run_dir(root + "/step-4", 9), UsageError);
  EXPECT_THROW(prepare_run_dir(root, -1), UsageError);
}

TEST(RunDir, ATornLatestIsAClearErrorNeverAFallback) {
  TempDir dir;
  std::string root = dir.path() + "/run";
  for (int step : {1, 2}) {
    make_checkpoint(prepare_run_dir(root, step), "s" + std::to_string(step));
    publish_step(root, step, 0);
  }
  fs::create_directory(root + "/step-3");  // incomplete: no manifest
  fs::create_directory_symlink(root + "/step-1", root + "/step-7");
  const std::string latest = root + "/latest";
  struct Case {
    std::string text, expected;
  };
  std::vector<Case> cases = {
      {"", latest + ": is empty"},
      {"\n", latest + ": is empty"},
      {"garbage\x01", latest + ": says 'garbage\\x01', which is not a step"},
      {"step-2x", latest + ": says 'step-2x', which is not a step"},
      {"../step-2", latest + ": says '../step-2', which names something outside " + root},
      {"/etc", latest + ": says '/etc', which names something outside"},
      {"step-9", latest + ": says 'step-9', but " + root + "/step-9 does not exist"},
      {"step-3", latest + ": says 'step-3', but " + root + "/step-3 is not a complete checkpoint"},
      {"step-7", latest + ": says 'step-7', but " + root + "/step-7 is a symbolic link"},
      {std::string(1000, 's'), latest + ": is larger than 256 bytes"},
  };
  for (const auto& c : cases) {
    write_text(latest, c.text);
    std::string error = error_of<FormatError>([&] { resolve_checkpoint(root); });
    EXPECT_TRUE(contains(error, c.expected)) << "latest '" << c.text << "': " << error;
    EXPECT_TRUE(contains(error, "never falls back")) << error;
  }
  write_text(latest, "step-1\n");
  EXPECT_EQ(resolve_checkpoint(root).path, root + "/step-1");
}

TEST(RunDir, ResolvingRestoresTheStepLatestNamesAndPublishingCleansDeadSavesOfOtherSteps) {
  TempDir dir;
  std::string root = dir.path() + "/run";
  make_checkpoint(prepare_run_dir(root, 1), "s1");
  publish_step(root, 1, 0);
  // step-1 was being replaced (same step saved again) and the save was killed between renames.
  fs::rename(root + "/step-1", root + "/.step-1.tmp-Zz9999.old");
  make_checkpoint(root + "/.step-1.tmp-Zz9999", "s1-new");
  ResolvedCheckpoint r = resolve_checkpoint(root);
  EXPECT_EQ(r.path, root + "/step-1");
  ASSERT_EQ(r.notes.size(), 1u);
  EXPECT_TRUE(contains(r.notes[0], "restored the new checkpoint")) << r.notes[0];
  EXPECT_EQ(marker_of(r.path), "s1-new");

  // A dead save of step 2 left its lock and staging; the next publish (of step 3) removes them.
  LockOwner gone = LockOwner::current();
  gone.pid = dead_pid();
  plant_lock(root + "/step-2", gone);
  fs::create_directory(root + "/.step-2.tmp-Qq1111");
  make_checkpoint(prepare_run_dir(root, 3), "s3");
  auto notes = publish_step(root, 3, 0);
  EXPECT_EQ(entries(root), (std::set<std::string>{"latest", "step-1", "step-3"}));
  EXPECT_EQ(notes.size(), 2u);
}

}  // namespace
}  // namespace shardload
