// Crash safety through the collective API: run directories (save with a step, load ROOT, torn
// latest), a checkpoint that a killed save left aside restored by the next load (saying so, the
// same on every rank), overwrite refusals and a live save's lock on every rank, dead saves'
// leftovers removed by the next save. The kills themselves: tests/python/test_crash_safety.py.
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "io/commit/checkpoint_dir.h"
#include "io/commit/save_lock.h"
#include "loader/shardload.h"
#include "mpi_test_util.h"

namespace shardload::testing {
namespace {

namespace fs = std::filesystem;

/// One replicated tensor and one split along dim 0, all elements equal to `value`.
Partition model(double value) {
  Partition p;
  p.add("rep", at::full({3}, value));
  p.add_split("split", at::full({2, 4}, value), 0);
  return p;
}

/// Loads `path` into a zero model; true when every element on every rank equals `value`.
bool loads_as(const std::string& path, double value, LoadResult* out = nullptr) {
  Partition p = model(0);
  LoadResult r = load(p, path, MPI_COMM_WORLD);
  if (out) *out = r;
  bool ok = true;
  for (const auto& e : p.entries()) ok = ok && e.tensor.eq(value).all().item<bool>();
  return all_ranks(ok);
}

std::set<std::string> entries(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

std::string joined(const std::vector<std::string>& notes) {
  std::string s;
  for (const auto& n : notes) s += n + "\n";
  return s;
}

TEST(Crash, SaveIntoARunDirectoryLoadItsLatestAndRotate) {
  SharedDir dir("crash-run");
  const std::string root = dir.path + "/run";
  for (int step = 1; step <= 4; ++step) {
    SaveResult saved = save(model(step), root, MPI_COMM_WORLD, {.step = step, .keep_last = 2});
    EXPECT_EQ(saved.path, root + "/step-" + std::to_string(step));
    EXPECT_TRUE(same_on_all_ranks(joined(saved.notes)));
    if (step >= 3) {
      EXPECT_NE(joined(saved.notes).find("removed step-" + std::to_string(step - 2)),
                std::string::npos)
          << joined(saved.notes);
    }
    EXPECT_TRUE(loads_as(root, step)) << "load(ROOT) after step " << step;
  }
  barrier();
  if (world_rank() == 0) {
    EXPECT_EQ(entries(root), (std::set<std::string>{"latest", "step-3", "step-4"}));
    EXPECT_EQ(read_checkpoint_info(root).dir, root + "/step-4");
  }
  // keep_last without a step, and a root that is itself a checkpoint, are refused everywhere.
  std::string error = error_of<UsageError>(
      [&] { save(model(5), dir.path + "/other", MPI_COMM_WORLD, {.keep_last = 1}); });
  EXPECT_NE(error.find("keep_last needs a step"), std::string::npos) << error;
  EXPECT_TRUE(same_on_all_ranks(error));
  error =
      error_of<UsageError>([&] { save(model(5), root + "/step-4", MPI_COMM_WORLD, {.step = 5}); });
  EXPECT_NE(error.find("is a checkpoint (it has manifest.h5), not a run directory"),
            std::string::npos)
      << error;
  EXPECT_TRUE(same_on_all_ranks(error));
}

TEST(Crash, ATornLatestIsTheSameFormatErrorOnEveryRank) {
  SharedDir dir("crash-torn");
  const std::string root = dir.path + "/run";
  save(model(1), root, MPI_COMM_WORLD, {.step = 1});
  for (std::string text : {"", "step-9\n", "../elsewhere", "garbage"}) {
    if (world_rank() == 0) std::ofstream(root + "/latest") << text;
    barrier();
    Partition p = model(0);
    std::string error = error_of<FormatError>([&] { load(p, root, MPI_COMM_WORLD); });
    EXPECT_NE(error.find(root + "/latest: "), std::string::npos) << error;
    if (!text.empty()) {
      std::string says = text.substr(0, text.find('\n'));
      EXPECT_NE(error.find("says '" + says + "'"), std::string::npos) << error;
    }
    EXPECT_NE(error.find("never falls back to another step"), std::string::npos) << error;
    EXPECT_TRUE(same_on_all_ranks(error)) << error;
    // Nothing was loaded: the model keeps its values.
    EXPECT_TRUE(p.entries()[0].tensor.eq(0).all().item<bool>());
  }
}

TEST(Crash, LoadRestoresWhatAKilledSaveLeftAsideAndSaysSoOnEveryRank) {
  SharedDir dir("crash-restore");
  const std::string ckpt = dir.path + "/ckpt";
  for (bool staging_complete : {false, true}) {
    save(model(1), ckpt, MPI_COMM_WORLD, {.overwrite = true});
    if (staging_complete) {
      save(model(2), dir.path + "/next", MPI_COMM_WORLD);
    }
    barrier();
    // What a save without RENAME_EXCHANGE leaves when killed between its two renames.
    if (world_rank() == 0) {
      fs::rename(ckpt, dir.path + "/.ckpt.tmp-Mpi123.old");
      if (staging_complete) fs::rename(dir.path + "/next", dir.path + "/.ckpt.tmp-Mpi123");
      std::ofstream(dir.path + "/.ckpt.commit")
          << "shardload-commit-journal 1\ntarget=ckpt\nstaging=.ckpt.tmp-Mpi123\n"
             "aside=.ckpt.tmp-Mpi123.old\nowner=pid 1 on host gone, since then\n";
    }
    barrier();
    LoadResult r;
    EXPECT_TRUE(loads_as(ckpt, staging_complete ? 2 : 1, &r));
    std::string notes = joined(r.notes);
    EXPECT_NE(notes.find(ckpt + ": restored the " + (staging_complete ? "new" : "previous") +
                         " checkpoint"),
              std::string::npos)
        << notes;
    EXPECT_TRUE(same_on_all_ranks(notes));
    barrier();
    if (world_rank() == 0) EXPECT_EQ(entries(dir.path), std::set<std::string>{"ckpt"});
  }
}

TEST(Crash, OverwriteRefusesAnythingButACheckpointOnEveryRank) {
  SharedDir dir("crash-overwrite");
  const std::string file = dir.path + "/file", full = dir.path + "/full", link = dir.path + "/link";
  if (world_rank() == 0) {
    std::ofstream(file) << "precious";
    fs::create_directory(full);
    std::ofstream(full + "/notes.txt") << "precious";
    fs::create_directory_symlink(full, link);
  }
  barrier();
  for (const auto& [path, expected] : std::vector<std::pair<std::string, std::string>>{
           {file, file + ": exists and is a file"},
           {full, full + ": exists and is a directory without manifest.h5"},
           {link, link + ": is a symbolic link"}}) {
    std::string error =
        error_of<UsageError>([&] { save(model(1), path, MPI_COMM_WORLD, {.overwrite = true}); });
    EXPECT_NE(error.find(expected), std::string::npos) << error;
    EXPECT_NE(error.find("refusing to replace it"), std::string::npos) << error;
    EXPECT_TRUE(same_on_all_ranks(error)) << error;
  }
  barrier();
  if (world_rank() == 0) {
    EXPECT_EQ(entries(dir.path), (std::set<std::string>{"file", "full", "link"}));
    EXPECT_EQ(entries(full), std::set<std::string>{"notes.txt"});
  }
}

TEST(Crash, ALiveSaveOfThePathIsRefusedAndDeadSavesLeftoversAreRemoved) {
  SharedDir dir("crash-lock");
  const std::string ckpt = dir.path + "/ckpt";
  save(model(1), ckpt, MPI_COMM_WORLD);
  {
    // Rank 0 holds the path's lock, as a live save elsewhere in this process would.
    std::unique_ptr<SaveLock> live;
    if (world_rank() == 0) live = SaveLock::acquire(ckpt);
    if (world_rank() == 0) fs::create_directory(dir.path + "/.ckpt.tmp-Live01");
    std::string error =
        error_of<UsageError>([&] { save(model(2), ckpt, MPI_COMM_WORLD, {.overwrite = true}); });
    EXPECT_NE(error.find(ckpt + ": another save of this checkpoint is in progress (pid "),
              std::string::npos)
        << error;
    EXPECT_TRUE(same_on_all_ranks(error)) << error;
    barrier();
    if (world_rank() == 0) EXPECT_TRUE(fs::is_directory(dir.path + "/.ckpt.tmp-Live01"));
  }
  // Now its owner is dead (a lock whose pid was reused by another process): the next save
  // breaks the lock and removes the staging directories, and says so on every rank.
  if (world_rank() == 0) {
    LockOwner gone = LockOwner::current();
    gone.start_ticks += 1;
    std::ofstream(lock_path_of(ckpt)) << gone.to_text();
    fs::create_directory(dir.path + "/.ckpt.tmp-Dead01");
  }
  barrier();
  SaveResult saved = save(model(2), ckpt, MPI_COMM_WORLD, {.overwrite = true});
  std::string notes = joined(saved.notes);
  EXPECT_NE(notes.find("removed the lock of a dead save"), std::string::npos) << notes;
  EXPECT_NE(notes.find("removed 2 leftover(s) of dead saves"), std::string::npos) << notes;
  EXPECT_TRUE(same_on_all_ranks(notes));
  EXPECT_TRUE(loads_as(ckpt, 2));
  barrier();
  if (world_rank() == 0) EXPECT_EQ(entries(dir.path), std::set<std::string>{"ckpt"});
}

}  // namespace
}  // namespace shardload::testing
