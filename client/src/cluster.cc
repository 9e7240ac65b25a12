// Cluster: placement, replication and fallback over member Clients
// (cluster_internal.h says what each operation does).
#include <xxhash.h>

#include <algorithm>
#include <cctype>
#include <future>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/src/cluster_internal.h"
#include "client/src/cluster_watch_internal.h"
#include "client/src/server_target_internal.h"
#include "client/src/srv_lookup_internal.h"
#include "h5depot/internal/image_id.h"

namespace h5depot::internal {
namespace {

constexpr std::string_view kScheme = "cluster:";
constexpr std::string_view kSrvScheme = "cluster+srv:";
constexpr char kExpected[] =
    "expected cluster:MEMBER,MEMBER,...[?replicas=R], each MEMBER a server "
    "target such as HOST:PORT, or cluster+srv:[//DNS-IP:PORT/]SRV-NAME"
    "[?replicas=R&refresh=DURATION]";
constexpr int kMaxReplicas = 16;
constexpr int kMaxMembers = 1024;
// How long a member that could not be reached is left alone before the
// next call tries to connect again.
constexpr absl::Duration kReconnectInterval = absl::Seconds(1);
// How long a member's restored_at is trusted before it is asked again.
constexpr absl::Duration kRestoredAtRefresh = absl::Seconds(10);
// Restored copies remembered as current, at most (then forgotten at once).
constexpr size_t kMaxCheckedCopies = 65536;
// Ids asked of each member per listed page when the caller names no size.
constexpr uint32_t kDefaultPageSize = 1000;

absl::Status Refuse(std::string_view target, std::string_view reason) {
  return absl::InvalidArgumentError(
      absl::StrCat("not a cluster target: '", std::string(target), "' (",
                   std::string(reason), "); ", kExpected));
}

std::string Quoted(std::string_view image_id) {
  return absl::StrCat("'", std::string(image_id), "'");
}

// Runs `call(i)` for every i in `indices` at once, the first on the
// calling thread, and returns when all have.
void ForEachAtOnce(const std::vector<size_t>& indices,
                   const std::function<void(size_t)>& call) {
  std::vector<std::future<void>> others;
  others.reserve(indices.size());
  for (size_t n = 1; n < indices.size(); ++n) {
    others.push_back(std::async(std::launch::async, call, indices[n]));
  }
  if (!indices.empty()) call(indices.front());
  for (std::future<void>& other : others) other.get();
}

}  // namespace

bool IsClusterTarget(std::string_view target) {
  return target.substr(0, kScheme.size()) == kScheme ||
         target.substr(0, kSrvScheme.size()) == kSrvScheme;
}

absl::StatusOr<ClusterTarget> ParseClusterTarget(std::string_view target) {
  if (!IsClusterTarget(target)) return Refuse(target, "no cluster: scheme");
  const bool discovers = target.substr(0, kSrvScheme.size()) == kSrvScheme;
  std::string_view rest =
      target.substr(discovers ? kSrvScheme.size() : kScheme.size());
  std::string_view options;
  if (const size_t question = rest.find('?');
      question != std::string_view::npos) {
    options = rest.substr(question + 1);
    rest = rest.substr(0, question);
  }
  ClusterTarget parsed;
  if (discovers) {
    if (rest.substr(0, 2) == "//") {
      const size_t slash = rest.find('/', 2);
      if (slash == std::string_view::npos) {
        return Refuse(target, "no SRV name after the DNS server");
      }
      parsed.dns_server = std::string(rest.substr(2, slash - 2));
      if (absl::Status bad = ValidateDnsServer(parsed.dns_server); !bad.ok()) {
        return Refuse(target, std::string(bad.message()));
      }
      rest.remove_prefix(slash + 1);
    }
    if (rest.empty()) return Refuse(target, "no SRV name");
    for (char c : rest) {
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' ||
            c == '_' || c == '.')) {
        return Refuse(target, "the SRV name is not a DNS name");
      }
    }
    parsed.srv_name = std::string(rest);
  }
  if (!discovers && rest.empty()) return Refuse(target, "no members");
  std::vector<std::string> members;
  while (!discovers) {
    const size_t comma = rest.find(',');
    const std::string_view written = rest.substr(0, comma);
    if (written.empty()) return Refuse(target, "an empty member");
    // A StatefulSet's pods: "h5depot-{0..2}.h5depot:7878" is three members.
    const size_t open = written.find('{');
    if (open == std::string_view::npos) {
      members.emplace_back(written);
    } else {
      const size_t dots = written.find("..", open);
      const size_t close = written.find('}', open);
      int first = 0;
      int last = -1;
      if (dots == std::string_view::npos || close == std::string_view::npos ||
          dots > close ||
          !absl::SimpleAtoi(
              absl::string_view(written.data() + open + 1, dots - open - 1),
              &first) ||
          !absl::SimpleAtoi(
              absl::string_view(written.data() + dots + 2, close - dots - 2),
              &last) ||
          first < 0 || last < first || last - first >= kMaxMembers) {
        return Refuse(target, absl::StrCat("member '", std::string(written),
                                           "': a range is {FIRST..LAST}"));
      }
      for (int n = first; n <= last; ++n) {
        members.push_back(absl::StrCat(std::string(written.substr(0, open)), n,
                                       std::string(written.substr(close + 1))));
      }
    }
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  if (members.size() > static_cast<size_t>(kMaxMembers)) {
    return Refuse(target, absl::StrCat("more than ", kMaxMembers, " members"));
  }
  for (const std::string& member : members) {
    if (IsClusterTarget(member)) return Refuse(target, "a cluster as member");
    if (absl::Status bad = ValidateServerTarget(member); !bad.ok()) {
      return Refuse(target, absl::StrCat("member '", std::string(member),
                                         "': ", bad.message()));
    }
    if (std::find(parsed.members.begin(), parsed.members.end(), member) !=
        parsed.members.end()) {
      return Refuse(target, absl::StrCat("member '", std::string(member),
                                         "' given twice"));
    }
    parsed.members.push_back(member);
  }
  while (!options.empty()) {
    const size_t amp = options.find('&');
    const std::string_view option = options.substr(0, amp);
    constexpr std::string_view kReplicas = "replicas=";
    constexpr std::string_view kRefresh = "refresh=";
    int replicas = 0;
    if (discovers && option.substr(0, kRefresh.size()) == kRefresh) {
      const std::string_view every = option.substr(kRefresh.size());
      if (!absl::ParseDuration(absl::string_view(every.data(), every.size()),
                               &parsed.refresh) ||
          parsed.refresh <= absl::ZeroDuration()) {
        return Refuse(target, "refresh must be a duration such as 30s");
      }
      if (amp == std::string_view::npos) break;
      options.remove_prefix(amp + 1);
      continue;
    }
    if (option.substr(0, kReplicas.size()) != kReplicas) {
      return Refuse(target,
                    absl::StrCat("unknown option '", std::string(option),
                                 discovers ? "' (the options are replicas and "
                                             "refresh)"
                                           : "' (the one option is replicas)"));
    }
    const std::string_view count = option.substr(kReplicas.size());
    if (!absl::SimpleAtoi(absl::string_view(count.data(), count.size()),
                          &replicas) ||
        replicas < 1 || replicas > kMaxReplicas) {
      return Refuse(target,
                    absl::StrCat("replicas must be 1 to ", kMaxReplicas));
    }
    parsed.replicas = replicas;
    if (amp == std::string_view::npos) break;
    options.remove_prefix(amp + 1);
  }
  return parsed;
}

uint64_t RendezvousSeed(std::string_view member) {
  return XXH3_64bits(member.data(), member.size());
}

std::vector<size_t> PlacementOrder(const std::vector<uint64_t>& seeds,
                                   std::string_view image_id) {
  std::vector<std::pair<uint64_t, size_t>> scored;
  scored.reserve(seeds.size());
  for (size_t i = 0; i < seeds.size(); ++i) {
    scored.emplace_back(
        XXH3_64bits_withSeed(image_id.data(), image_id.size(), seeds[i]), i);
  }
  std::sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  std::vector<size_t> order;
  order.reserve(scored.size());
  for (const auto& [score, index] : scored) order.push_back(index);
  return order;
}

struct Cluster::Member {
  explicit Member(std::string target_in) : target(std::move(target_in)) {}

  const std::string target;
  absl::Mutex mutex;
  std::shared_ptr<Client> client ABSL_GUARDED_BY(mutex);
  // After a failed connect, or a call it answered UNAVAILABLE: the error,
  // given instead of trying it until retry_after.
  absl::Status error ABSL_GUARDED_BY(mutex);
  absl::Time retry_after ABSL_GUARDED_BY(mutex) = absl::InfinitePast();
  // Its ServerLimits::restored_at, and when to ask again
  // (Cluster::RestoredAt).
  absl::Time restored_at ABSL_GUARDED_BY(mutex) = absl::InfinitePast();
  absl::Time restored_at_due ABSL_GUARDED_BY(mutex) = absl::InfinitePast();
};

Cluster::Cluster(ClusterTarget target, const ClientOptions& options)
    : target_(std::move(target)), options_(options) {}

Cluster::~Cluster() = default;

std::shared_ptr<const Cluster::Membership> Cluster::MembershipOf(
    const std::vector<std::string>& names, const Membership* previous) {
  auto made = std::make_shared<Membership>();
  for (const std::string& name : names) {
    std::shared_ptr<Member> member;
    if (previous != nullptr) {
      for (const std::shared_ptr<Member>& kept : previous->members) {
        if (kept->target == name) member = kept;
      }
    }
    if (member == nullptr) member = std::make_shared<Member>(name);
    made->seeds.push_back(RendezvousSeed(name));
    made->members.push_back(std::move(member));
  }
  return made;
}

std::shared_ptr<const Cluster::Membership> Cluster::Current() {
  if (fixed_ != nullptr) return fixed_;
  std::shared_ptr<const Membership> previous;
  {
    absl::MutexLock lock(&membership_mutex_);
    if (looking_up_ || absl::Now() < next_lookup_) return discovered_;
    looking_up_ = true;  // one lookup at a time; others use what is known
    previous = discovered_;
  }
  absl::StatusOr<std::vector<std::string>> names =
      LookUpSrvMembers(target_.srv_name, target_.dns_server);
  absl::MutexLock lock(&membership_mutex_);
  looking_up_ = false;
  next_lookup_ = absl::Now() + target_.refresh;
  // A failed or empty answer keeps the members known.
  if (names.ok() && !names->empty()) {
    discovered_ = MembershipOf(*names, previous.get());
  }
  return discovered_;
}

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Connect(
    ClusterTarget target, const ClientOptions& options) {
  std::unique_ptr<Cluster> cluster(new Cluster(std::move(target), options));
  if (cluster->target_.srv_name.empty()) {
    cluster->fixed_ = MembershipOf(cluster->target_.members, nullptr);
  } else {
    absl::StatusOr<std::vector<std::string>> names = LookUpSrvMembers(
        cluster->target_.srv_name, cluster->target_.dns_server);
    if (!names.ok()) return names.status();
    if (names->empty()) {
      return absl::UnavailableError(absl::StrCat("DNS names no server under ",
                                                 cluster->target_.srv_name));
    }
    absl::MutexLock lock(&cluster->membership_mutex_);
    cluster->discovered_ = MembershipOf(*names, nullptr);
    cluster->next_lookup_ = absl::Now() + cluster->target_.refresh;
  }
  const std::shared_ptr<const Membership> current = cluster->Current();
  const Membership& m = *current;
  std::vector<size_t> all(m.members.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  std::vector<absl::Status> results(all.size());
  ForEachAtOnce(all, [&](size_t i) {
    results[i] = cluster->MemberClient(m, i).status();
  });
  std::vector<std::string> errors;
  for (size_t i = 0; i < results.size(); ++i) {
    if (results[i].ok()) continue;
    // Options that are wrong for a member are wrong for the cluster.
    if (absl::IsInvalidArgument(results[i]) ||
        absl::IsFailedPrecondition(results[i])) {
      return results[i];
    }
    errors.emplace_back(results[i].message());
  }
  if (errors.size() == results.size()) {
    return absl::UnavailableError(absl::StrCat(
        "no server of the cluster answered: ", absl::StrJoin(errors, "; ")));
  }
  return cluster;
}

absl::StatusOr<std::shared_ptr<Client>> Cluster::MemberClient(
    const Membership& m, size_t index) {
  Member& member = *m.members[index];
  absl::MutexLock lock(&member.mutex);
  if (absl::Now() < member.retry_after) return member.error;
  if (member.client != nullptr) return member.client;
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(member.target, options_);
  if (!client.ok()) {
    member.error = absl::Status(client.status().code(),
                                absl::StrCat("server ", member.target, ": ",
                                             client.status().message()));
    member.retry_after = absl::Now() + kReconnectInterval;
    return member.error;
  }
  member.client = *std::move(client);
  return member.client;
}

std::vector<std::pair<size_t, std::shared_ptr<Client>>>
Cluster::ReachableCopies(const Membership& m, const std::vector<size_t>& order,
                         size_t most, size_t from) {
  std::vector<std::pair<size_t, std::shared_ptr<Client>>> reachable;
  for (size_t position = from;
       position < order.size() && reachable.size() < most; ++position) {
    absl::StatusOr<std::shared_ptr<Client>> client =
        MemberClient(m, order[position]);
    if (client.ok()) reachable.emplace_back(position, *std::move(client));
  }
  return reachable;
}

namespace {

// The key of a (stream, group) in Cluster::served_by_.
std::string ServedKey(std::string_view stream, std::string_view group) {
  return absl::StrCat(std::string(stream), "\n",
                      std::string(group));  // neither may hold a newline
}

absl::Status NoCopyReachable(const absl::Status& first_error) {
  return absl::UnavailableError(absl::StrCat(
      "no server of the cluster that holds the stream can be reached",
      first_error.ok() ? "" : ": ", first_error.message()));
}

}  // namespace

absl::StatusOr<AppendedStep> Cluster::StreamAppend(
    std::string_view stream, const AppendOptions& options,
    const AppendOne& append_one) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  const std::vector<size_t> order = m.Order(stream);
  // The acting primary: the first member that takes it, past those that
  // cannot be reached or answer UNAVAILABLE.
  absl::Status first_error;
  size_t next = 0;
  std::optional<absl::StatusOr<AppendedStep>> appended;
  while (!appended.has_value() && next < order.size()) {
    const size_t index = order[next++];
    absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, index);
    if (!client.ok()) {
      if (first_error.ok()) first_error = client.status();
      continue;
    }
    const std::string& target = m.members[index]->target;
    AppendOptions primary_options = options;
    if (std::optional<uint64_t> at = PrimaryCatchUp(m, stream, target)) {
      primary_options.replica_step = *at;
    }
    absl::StatusOr<AppendedStep> answer = append_one(**client, primary_options);
    Note(m, index, answer.status());
    if (absl::IsUnavailable(answer.status())) {
      if (first_error.ok()) first_error = answer.status();
      continue;
    }
    if (answer.ok()) {
      absl::MutexLock lock(&served_mutex_);
      Appending& known = appending_[std::string(stream)];
      // A number that went back: the primary lost the stream unseen (it
      // restarted between two appends). Checked again next time.
      if (known.primary == target && answer->step <= known.last_step &&
          !primary_options.replica_step.has_value()) {
        known.primary.clear();
      } else {
        known.primary = target;
      }
      known.last_step = answer->step;
    }
    appended = std::move(answer);
  }
  if (!appended.has_value()) return NoCopyReachable(first_error);
  if (!appended->ok()) return *appended;
  // The copies, each once: one that fails is skipped (its server's groups
  // are told the steps it missed).
  AppendOptions copy = options;
  copy.replica_step = (*appended)->step;
  const size_t copies = static_cast<size_t>(target_.replicas) - 1;
  for (auto& [position, client] : ReachableCopies(m, order, copies, next)) {
    Note(m, order[position], append_one(*client, copy).status());
  }
  return appended->value();
}

absl::Status Cluster::OnStreamCopies(
    std::string_view stream, const std::function<absl::Status(Client&)>& call,
    bool any_suffices) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  const std::vector<size_t> order = m.Order(stream);
  // A delete reaches every member: a server that was a copy while another
  // was down may hold one too.
  std::vector<std::pair<size_t, std::shared_ptr<Client>>> copies =
      ReachableCopies(
          m, order,
          any_suffices ? order.size() : static_cast<size_t>(target_.replicas));
  if (copies.empty()) return NoCopyReachable(absl::OkStatus());
  absl::Status first = call(*copies[0].second);
  Note(m, order[copies[0].first], first);
  if (!first.ok() && !any_suffices) return first;
  bool any = first.ok();
  for (size_t n = 1; n < copies.size(); ++n) {
    const absl::Status answer = call(*copies[n].second);
    Note(m, order[copies[n].first], answer);
    any = any || answer.ok();
  }
  return any ? absl::OkStatus() : first;
}

absl::StatusOr<StreamInfo> Cluster::StreamStat(
    std::string_view stream,
    const std::function<absl::StatusOr<StreamInfo>(Client&)>& call) {
  const std::shared_ptr<const Membership> current = Current();
  return FirstAnswering(*current, stream, call);
}

std::optional<uint64_t> Cluster::PrimaryCatchUp(const Membership& m,
                                                std::string_view stream,
                                                std::string_view target) {
  {
    absl::MutexLock lock(&served_mutex_);
    auto it = appending_.find(std::string(stream));
    if (it != appending_.end() && it->second.primary == target) {
      return std::nullopt;
    }
  }
  const std::vector<size_t> order = m.Order(stream);
  uint64_t most = 0;
  std::optional<uint64_t> primary_has;
  std::shared_ptr<Client> primary;
  std::optional<StreamPolicy> policy;  // a copy's, for a primary without it
  for (auto& [position, client] :
       ReachableCopies(m, order, static_cast<size_t>(target_.replicas))) {
    absl::StatusOr<StreamInfo> info = client->StatStream(stream);
    const uint64_t appended = info.ok() ? info->appended_steps : 0;
    if (m.members[order[position]]->target == target) {
      primary_has = appended;
      primary = client;
    } else if (info.ok() && info->created && !policy.has_value()) {
      policy = info->policy;
    }
    most = std::max(most, appended);
  }
  if (!primary_has.has_value() || *primary_has >= most) return std::nullopt;
  // Made again with its policy if it lost the stream (an append would make
  // it with the defaults); one it still has keeps its own.
  if (*primary_has == 0 && policy.has_value()) {
    primary->CreateStream(stream, *policy).IgnoreError();
  }
  return most;  // the next step after the most any copy has
}

std::string Cluster::ChooseReadingCopy(const Membership& m,
                                       std::string_view stream,
                                       std::string_view failed) {
  const std::vector<size_t> order = m.Order(stream);
  std::string chosen;
  uint64_t most = 0;
  for (auto& [position, client] :
       ReachableCopies(m, order, static_cast<size_t>(target_.replicas))) {
    const std::string& target = m.members[order[position]]->target;
    if (target == failed) continue;
    absl::StatusOr<StreamInfo> info = client->StatStream(stream);
    Note(m, order[position], info.status());
    if (absl::IsUnavailable(info.status())) continue;
    const uint64_t appended = info.ok() ? info->appended_steps : 0;
    if (chosen.empty() || appended > most) {
      chosen = target;
      most = appended;
    }
  }
  return chosen;
}

size_t Cluster::CopyAck(const Membership& m, std::string_view stream,
                        std::string_view group, uint64_t step,
                        std::string_view except) {
  const std::vector<size_t> order = m.Order(stream);
  size_t took = 0;
  for (auto& [position, client] :
       ReachableCopies(m, order, static_cast<size_t>(target_.replicas))) {
    if (m.members[order[position]]->target == except) continue;
    const absl::Status copied = client->AckCopy(stream, group, step);
    Note(m, order[position], copied);
    if (copied.ok()) ++took;
  }
  return took;
}

absl::StatusOr<StreamStep> Cluster::StreamNext(std::string_view stream,
                                               std::string_view group,
                                               const NextOptions& options) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  const std::string key = ServedKey(stream, group);
  std::string served;
  {
    absl::MutexLock lock(&served_mutex_);
    auto it = served_by_.find(key);
    if (it != served_by_.end()) served = it->second;
  }
  NextOptions asked = options;
  std::string reading = served;
  std::string failed;
  absl::Status first_error;
  for (size_t tries = 0; tries <= m.members.size(); ++tries) {
    if (reading.empty()) reading = ChooseReadingCopy(m, stream, failed);
    if (reading.empty()) break;
    size_t index = 0;
    while (index < m.members.size() && m.members[index]->target != reading) {
      ++index;
    }
    absl::StatusOr<std::shared_ptr<Client>> client =
        index < m.members.size() ? MemberClient(m, index)
                                 : absl::StatusOr<std::shared_ptr<Client>>(
                                       absl::UnavailableError("left"));
    // An acknowledgement rides only to the member that handed the step
    // out; for any other it is sent on its own first.
    if (client.ok() && asked.ack_step.has_value() && reading != served) {
      absl::Status acked =
          StreamAck(stream, group, *asked.ack_step, asked.consumer);
      if (!acked.ok()) return acked;
      asked.ack_step.reset();
    }
    absl::StatusOr<StreamStep> step =
        client.ok() ? (*client)->Next(stream, group, asked)
                    : absl::StatusOr<StreamStep>(client.status());
    if (client.ok()) Note(m, index, step.status());
    if (absl::IsUnavailable(step.status())) {
      if (first_error.ok()) first_error = step.status();
      if (asked.ack_step.has_value()) {
        // Whether that member took it is unknown: the others take a copy.
        CopyAck(m, stream, group, *asked.ack_step, reading);
        asked.ack_step.reset();
      }
      failed = reading;
      reading.clear();
      continue;
    }
    if (asked.ack_step.has_value() &&
        step.status().code() != absl::StatusCode::kFailedPrecondition) {
      // Taken where the step was leased: the other copies follow.
      CopyAck(m, stream, group, *asked.ack_step, reading);
    }
    {
      absl::MutexLock lock(&served_mutex_);
      served_by_[key] = reading;
    }
    return step;
  }
  return NoCopyReachable(first_error);
}

absl::Status Cluster::StreamAck(std::string_view stream, std::string_view group,
                                uint64_t step, std::string_view consumer) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  std::string served;
  {
    absl::MutexLock lock(&served_mutex_);
    auto it = served_by_.find(ServedKey(stream, group));
    if (it != served_by_.end()) served = it->second;
  }
  std::string acked_on;
  for (size_t index : m.Order(stream)) {
    if (m.members[index]->target != served) continue;
    absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, index);
    if (!client.ok()) break;
    const absl::Status acked = (*client)->Ack(stream, group, step, consumer);
    Note(m, index, acked);
    if (absl::IsUnavailable(acked)) break;
    // Refused where the step was leased (its lease ran out, say): that is
    // the answer, and the copies change nothing.
    if (!acked.ok()) return acked;
    acked_on = served;
    break;
  }
  const size_t copied = CopyAck(m, stream, group, step, acked_on);
  if (acked_on.empty() && copied == 0) {
    return NoCopyReachable(absl::OkStatus());
  }
  return absl::OkStatus();
}

void Cluster::Note(const Membership& m, size_t index,
                   const absl::Status& answer) {
  if (!absl::IsUnavailable(answer)) return;
  Member& member = *m.members[index];
  absl::MutexLock lock(&member.mutex);
  member.error = answer;
  member.retry_after = absl::Now() + kReconnectInterval;
  member.restored_at_due = absl::InfinitePast();  // it may come back restored
}

absl::Time Cluster::RestoredAt(const Membership& m, size_t index) {
  Member& member = *m.members[index];
  {
    absl::MutexLock lock(&member.mutex);
    if (absl::Now() < member.restored_at_due) return member.restored_at;
  }
  absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, index);
  absl::StatusOr<ServerLimits> limits =
      client.ok() ? (*client)->GetLimits()
                  : absl::StatusOr<ServerLimits>(client.status());
  absl::MutexLock lock(&member.mutex);
  member.restored_at = limits.ok() ? limits->restored_at : absl::InfinitePast();
  member.restored_at_due =
      absl::Now() + (limits.ok() ? kRestoredAtRefresh : kReconnectInterval);
  return member.restored_at;
}

std::optional<size_t> Cluster::NewerThanARestoredCopy(
    const Membership& m, std::string_view image_id) {
  if (target_.replicas < 2) return std::nullopt;
  const std::vector<size_t> order = m.Order(image_id);
  const size_t copies =
      std::min(order.size(), static_cast<size_t>(target_.replicas));
  bool any_restored = false;
  for (size_t position = 0; position < copies; ++position) {
    if (RestoredAt(m, order[position]) != absl::InfinitePast()) {
      any_restored = true;
    }
  }
  if (!any_restored) return std::nullopt;
  // The copy a read down the order would stop at.
  for (size_t index : order) {
    absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, index);
    if (!client.ok()) continue;
    absl::StatusOr<ImageInfo> info = (*client)->Stat(image_id);
    Note(m, index, info.status());
    if (info.ok()) return NewerThanCopy(m, image_id, index, *info);
    // Anything else is for the read itself to report.
    if (!absl::IsNotFound(info.status()) &&
        !absl::IsUnavailable(info.status())) {
      return std::nullopt;
    }
  }
  return std::nullopt;
}

std::optional<size_t> Cluster::NewerThanCopy(const Membership& m,
                                             std::string_view image_id,
                                             size_t holder,
                                             const ImageInfo& held) {
  if (target_.replicas < 2 || held.created >= RestoredAt(m, holder)) {
    return std::nullopt;
  }
  const std::string key =
      absl::StrCat(m.members[holder]->target, "\n", held.generation, "\n",
                   std::string(image_id));
  {
    absl::MutexLock lock(&checked_mutex_);
    if (checked_current_.contains(key)) return std::nullopt;
  }
  // A push made while the holder was down went to the first R members of
  // the order that could be reached then: among the first R + 1.
  const std::vector<size_t> order = m.Order(image_id);
  const size_t asked =
      std::min(order.size(), static_cast<size_t>(target_.replicas) + 1);
  std::optional<size_t> newest;
  uint64_t newest_generation = held.generation;
  bool all_answered = true;
  for (size_t position = 0; position < asked; ++position) {
    const size_t index = order[position];
    if (index == holder) continue;
    absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, index);
    absl::StatusOr<ImageInfo> info =
        client.ok() ? (*client)->Stat(image_id)
                    : absl::StatusOr<ImageInfo>(client.status());
    if (client.ok()) Note(m, index, info.status());
    if (info.ok() && info->generation > newest_generation) {
      newest = index;
      newest_generation = info->generation;
    } else if (!info.ok() && !absl::IsNotFound(info.status())) {
      all_answered = false;
    }
  }
  if (newest.has_value() || !all_answered) return newest;
  absl::MutexLock lock(&checked_mutex_);
  if (checked_current_.size() >= kMaxCheckedCopies) checked_current_.clear();
  checked_current_.insert(key);
  return std::nullopt;
}

template <typename T>
std::optional<T> Cluster::FromNewerCopy(
    const Membership& m, std::string_view image_id, const Client* answered,
    const ImageInfo& held,
    const std::function<absl::StatusOr<T>(Client&)>& call) {
  const std::optional<size_t> holder = IndexOf(m, answered);
  if (!holder.has_value()) return std::nullopt;
  const std::optional<size_t> newer = NewerThanCopy(m, image_id, *holder, held);
  if (!newer.has_value()) return std::nullopt;
  absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, *newer);
  if (!client.ok()) return std::nullopt;
  absl::StatusOr<T> answer = call(**client);
  Note(m, *newer, answer.status());
  if (!answer.ok()) return std::nullopt;
  return *std::move(answer);
}

void Cluster::RepairCopy(const Membership& m, std::string_view image_id,
                         const Client* stale, const ImageInfo& held,
                         const FetchedImage& newest) {
  const std::optional<size_t> holder = IndexOf(m, stale);
  if (!holder.has_value()) return;
  PushOptions copy;
  copy.if_generation_match = held.generation;  // unless changed meanwhile
  copy.replica_generation = newest.info.generation;
  if (newest.info.expires != absl::InfiniteFuture()) {
    copy.ttl = newest.info.expires - absl::Now();
    if (copy.ttl <= absl::ZeroDuration()) return;  // gone by now anyway
  }
  absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, *holder);
  if (!client.ok()) return;
  // A failure leaves the stale copy, for the next read or a rebalance.
  absl::StatusOr<ImageInfo> pushed = (*client)->Push(
      image_id, newest.buffer.data(), newest.buffer.size(), copy);
  Note(m, *holder, pushed.status());
}

std::optional<size_t> Cluster::IndexOf(const Membership& m,
                                       const Client* client) {
  for (size_t index = 0; index < m.members.size(); ++index) {
    Member& member = *m.members[index];
    absl::MutexLock lock(&member.mutex);
    if (member.client.get() == client) return index;
  }
  return std::nullopt;
}

template <typename T>
absl::StatusOr<T> Cluster::FirstAnswering(
    const Membership& m, std::string_view image_id,
    const std::function<absl::StatusOr<T>(Client&)>& call,
    const std::function<bool()>& may_go_on) {
  absl::Status first_error;
  for (size_t index : m.Order(image_id)) {
    absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, index);
    if (!client.ok()) {
      if (first_error.ok()) first_error = client.status();
      continue;
    }
    absl::StatusOr<T> answer = call(**client);
    Note(m, index, answer.status());
    if (!absl::IsUnavailable(answer.status()) || (may_go_on && !may_go_on())) {
      return answer;
    }
    if (first_error.ok()) first_error = answer.status();
  }
  return absl::UnavailableError(absl::StrCat(
      "no server of the cluster can be reached: ", first_error.message()));
}

template <typename T>
absl::StatusOr<T> Cluster::DownTheOrder(
    const Membership& m, std::string_view image_id,
    const std::function<absl::StatusOr<T>(Client&)>& call,
    const std::function<bool()>& may_go_on) {
  absl::Status not_found;
  absl::Status first_unavailable;
  std::vector<std::string> unreachable;
  // The first member that answered NOT_FOUND, asked again if a later one
  // has the image: a push reaches the first reachable replica before the
  // others, so it may have arrived there meanwhile, and its answer (its
  // generation numbers) is the one to give.
  std::shared_ptr<Client> first_without;
  for (size_t index : m.Order(image_id)) {
    absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, index);
    absl::StatusOr<T> answer =
        client.ok() ? call(**client) : absl::StatusOr<T>(client.status());
    if (client.ok()) Note(m, index, answer.status());
    if (answer.ok()) {
      if (first_without != nullptr && (!may_go_on || may_go_on())) {
        absl::StatusOr<T> again = call(*first_without);
        if (again.ok()) return again;
      }
      return answer;
    }
    if (absl::IsNotFound(answer.status())) {
      if (not_found.ok() && unreachable.empty()) first_without = *client;
      not_found = answer.status();
    } else if (absl::IsUnavailable(answer.status()) || !client.ok()) {
      unreachable.push_back(m.members[index]->target);
      if (first_unavailable.ok()) first_unavailable = answer.status();
    } else {
      return answer;
    }
    if (may_go_on && !may_go_on()) return answer;
  }
  if (!unreachable.empty()) {
    return absl::UnavailableError(
        absl::StrCat(Quoted(image_id), " is on no server that answered, and ",
                     absl::StrJoin(unreachable, ", "),
                     " could not be asked: ", first_unavailable.message()));
  }
  return not_found;
}

absl::StatusOr<ImageInfo> Cluster::Push(std::string_view image_id,
                                        const PushOptions& options,
                                        const PushOne& push_one) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  const std::vector<size_t> order = m.Order(image_id);
  const size_t wanted =
      std::min(order.size(), static_cast<size_t>(target_.replicas));
  size_t next = 0;  // in `order`, the next member to try
  std::optional<std::pair<size_t, ImageInfo>> first;  // position, info
  std::vector<std::string> published_on;
  std::vector<std::string> unreachable;
  absl::Status first_unavailable;
  PushOptions replica_options = options;
  replica_options.progress = nullptr;

  // The first copy, before any other, so that a replica never has an
  // image its primary does not (reads then see the primary's generation
  // numbers). With a condition it must be the primary: it decides, and the
  // others follow unconditionally.
  if (options.if_generation_match.has_value()) {
    absl::StatusOr<std::shared_ptr<Client>> primary = MemberClient(m, order[0]);
    if (!primary.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "a conditional push is decided by the image's primary server, "
          "which cannot be reached: ",
          primary.status().message()));
    }
    absl::StatusOr<ImageInfo> decided = push_one(**primary, options);
    if (!decided.ok()) return decided;
    first.emplace(0, *decided);
    published_on.push_back(m.members[order[0]]->target);
    next = 1;
  }
  while (!first.has_value() && next < order.size()) {
    const size_t position = next++;
    const std::string& member = m.members[order[position]]->target;
    absl::StatusOr<std::shared_ptr<Client>> client =
        MemberClient(m, order[position]);
    absl::StatusOr<ImageInfo> pushed =
        client.ok() ? push_one(**client, options)
                    : absl::StatusOr<ImageInfo>(client.status());
    if (client.ok()) Note(m, order[position], pushed.status());
    if (pushed.ok()) {
      first.emplace(position, *pushed);
      published_on.push_back(member);
    } else if (absl::IsUnavailable(pushed.status()) || !client.ok()) {
      unreachable.push_back(member);
      if (first_unavailable.ok()) first_unavailable = pushed.status();
    } else {
      return pushed.status();  // a refusal: the same everywhere
    }
  }
  size_t published = first.has_value() ? 1 : 0;
  replica_options.if_generation_match.reset();
  // Every copy under the first one's generation, so that a reader or a
  // consumer following generations sees the same numbers on any replica.
  if (first.has_value()) {
    replica_options.replica_generation = first->second.generation;
  }

  // The other copies, at once.
  while (published < wanted && next < order.size()) {
    // The next members that can be reached, as many as are missing.
    std::vector<std::pair<size_t, std::shared_ptr<Client>>> batch;
    while (batch.size() < wanted - published && next < order.size()) {
      absl::StatusOr<std::shared_ptr<Client>> client =
          MemberClient(m, order[next]);
      if (client.ok()) {
        batch.emplace_back(next, *std::move(client));
      } else {
        unreachable.push_back(m.members[order[next]]->target);
        if (first_unavailable.ok()) first_unavailable = client.status();
      }
      ++next;
    }
    std::vector<absl::StatusOr<ImageInfo>> results(
        batch.size(), absl::UnknownError("not pushed"));
    std::vector<size_t> slots(batch.size());
    for (size_t n = 0; n < slots.size(); ++n) slots[n] = n;
    ForEachAtOnce(slots, [&](size_t n) {
      // The progress goes with the first push of an unconditional one.
      const bool reports = n == 0 && !first.has_value() && published == 0;
      results[n] =
          push_one(*batch[n].second, reports ? options : replica_options);
    });
    for (size_t n = 0; n < batch.size(); ++n) {
      const std::string& member = m.members[order[batch[n].first]]->target;
      // A replica that holds a newer generation already got a later push
      // (from another client, racing this one): as on one server, the
      // later one stands, and this copy counts as placed.
      const bool superseded = replica_options.replica_generation != 0 &&
                              absl::IsFailedPrecondition(results[n].status());
      if (results[n].ok() || superseded) {
        ++published;
        published_on.push_back(member);
      } else if (absl::IsUnavailable(results[n].status())) {
        Note(m, order[batch[n].first], results[n].status());
        unreachable.push_back(member);
        if (first_unavailable.ok()) first_unavailable = results[n].status();
      } else {
        return results[n].status();  // a refusal: the same everywhere
      }
    }
  }
  if (published == wanted) return first->second;
  if (!first.has_value()) {
    return absl::UnavailableError(
        absl::StrCat("no server of the cluster could take it: ",
                     first_unavailable.message()));
  }
  return absl::UnavailableError(
      absl::StrCat("published on ", published, " of the ", wanted,
                   " servers it needs (", absl::StrJoin(published_on, ", "),
                   "); ", absl::StrJoin(unreachable, ", "),
                   " could not take it: push again to place every copy (",
                   first_unavailable.message(), ")"));
}

absl::StatusOr<FetchedImage> Cluster::Fetch(std::string_view image_id,
                                            const FetchOptions& options) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  const auto fetch = [&](const FetchOptions& with) {
    return std::function<absl::StatusOr<FetchedImage>(Client&)>(
        [&image_id, with](Client& member) {
          return member.Fetch(image_id, with);
        });
  };
  if (options.newer_than == 0) {
    FetchOptions now = options;
    now.wait = absl::ZeroDuration();
    const Client* answered = nullptr;
    absl::StatusOr<FetchedImage> found =
        DownTheOrder<FetchedImage>(m, image_id, [&](Client& member) {
          absl::StatusOr<FetchedImage> fetched = member.Fetch(image_id, now);
          if (fetched.ok()) answered = &member;
          return fetched;
        });
    if (found.ok()) {
      if (std::optional<FetchedImage> newer =
              FromNewerCopy(m, image_id, answered, found->info, fetch(now))) {
        RepairCopy(m, image_id, answered, found->info, *newer);
        return *std::move(newer);
      }
    }
    if (options.wait == absl::ZeroDuration() ||
        !(absl::IsNotFound(found.status()) ||
          absl::IsUnavailable(found.status()))) {
      return found;
    }
  }
  // A wait, or a newer generation: where pushes go first.
  return FirstAnswering(m, image_id, fetch(options));
}

absl::StatusOr<ImageInfo> Cluster::FetchTo(std::string_view image_id,
                                           const ImageSink& sink,
                                           const FetchOptions& options) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  bool handed_bytes = false;
  const ImageSink counting = [&](const void* data, size_t size) {
    handed_bytes = true;
    return sink(data, size);
  };
  if (options.newer_than == 0) {
    FetchOptions now = options;
    now.wait = absl::ZeroDuration();
    if (std::optional<size_t> newer = NewerThanARestoredCopy(m, image_id)) {
      absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, *newer);
      if (client.ok()) {
        absl::StatusOr<ImageInfo> fetched =
            (*client)->FetchTo(image_id, counting, now);
        Note(m, *newer, fetched.status());
        if (fetched.ok() || handed_bytes) return fetched;
      }
    }
    absl::StatusOr<ImageInfo> found = DownTheOrder<ImageInfo>(
        m, image_id,
        [&](Client& member) { return member.FetchTo(image_id, counting, now); },
        [&] { return !handed_bytes; });
    if (options.wait == absl::ZeroDuration() || handed_bytes ||
        !(absl::IsNotFound(found.status()) ||
          absl::IsUnavailable(found.status()))) {
      return found;
    }
  }
  return FirstAnswering<ImageInfo>(
      m, image_id,
      [&](Client& member) {
        return member.FetchTo(image_id, counting, options);
      },
      [&] { return !handed_bytes; });
}

absl::StatusOr<ReadResult> Cluster::Read(std::string_view image_id,
                                         uint64_t generation, uint64_t offset,
                                         void* out, size_t length) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  // Replicas hold a generation under the same number: any will do.
  return DownTheOrder<ReadResult>(m, image_id, [&](Client& member) {
    return member.Read(image_id, generation, offset, out, length);
  });
}

absl::StatusOr<std::unique_ptr<ImageReader>> Cluster::OpenReader(
    std::string_view image_id, uint64_t generation) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  return DownTheOrder<std::unique_ptr<ImageReader>>(
      m, image_id,
      [&](Client& member) { return member.OpenReader(image_id, generation); });
}

absl::StatusOr<ImageInfo> Cluster::Stat(std::string_view image_id,
                                        absl::Duration wait,
                                        uint64_t newer_than) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  if (newer_than == 0) {
    const Client* answered = nullptr;
    absl::StatusOr<ImageInfo> found =
        DownTheOrder<ImageInfo>(m, image_id, [&](Client& member) {
          absl::StatusOr<ImageInfo> info = member.Stat(image_id);
          if (info.ok()) answered = &member;
          return info;
        });
    if (found.ok()) {
      if (std::optional<ImageInfo> newer = FromNewerCopy<ImageInfo>(
              m, image_id, answered, *found,
              [&](Client& member) { return member.Stat(image_id); })) {
        return *std::move(newer);
      }
    }
    if (wait == absl::ZeroDuration() ||
        !(absl::IsNotFound(found.status()) ||
          absl::IsUnavailable(found.status()))) {
      return found;
    }
  }
  return FirstAnswering<ImageInfo>(m, image_id, [&](Client& member) {
    return member.Stat(image_id, wait, newer_than);
  });
}

absl::StatusOr<ListPage> Cluster::List(const ListOptions& options) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  const uint32_t page_size =
      options.page_size != 0 ? options.page_size : kDefaultPageSize;
  std::vector<size_t> all(m.members.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  std::vector<absl::StatusOr<ListPage>> pages(all.size(),
                                              absl::UnknownError("not listed"));
  ForEachAtOnce(all, [&](size_t i) {
    absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, i);
    if (!client.ok()) {
      pages[i] = client.status();
      return;
    }
    // A server's page token is the last id of its page, so the cluster's
    // (the last id it gave) continues every member's listing.
    ListOptions member_options = options;
    member_options.page_size = page_size;
    pages[i] = (*client)->List(member_options);
    Note(m, i, pages[i].status());
  });
  // Ids up to `cutoff` are complete: every member that has more listed
  // all its ids up to its page's last one.
  std::optional<std::string> cutoff;
  std::map<std::string, std::pair<size_t, ImageInfo>> merged;  // id: member
  std::vector<std::string> unreachable;
  absl::Status first_unavailable;
  for (size_t i = 0; i < pages.size(); ++i) {
    if (!pages[i].ok()) {
      if (!absl::IsUnavailable(pages[i].status())) return pages[i].status();
      unreachable.push_back(m.members[i]->target);
      if (first_unavailable.ok()) first_unavailable = pages[i].status();
      continue;
    }
    if (!pages[i]->next_page_token.empty() && !pages[i]->images.empty()) {
      const std::string& last = pages[i]->images.back().image_id;
      if (!cutoff.has_value() || last < *cutoff) cutoff = last;
    }
    for (ImageInfo& info : pages[i]->images) {
      auto [at, inserted] = merged.try_emplace(info.image_id, i, info);
      if (inserted) continue;
      // A replica listed twice: the copy reads would find first.
      for (size_t index : m.Order(info.image_id)) {
        if (index == at->second.first) break;
        if (index == i) {
          at->second = {i, info};
          break;
        }
      }
    }
  }
  if (unreachable.size() >= static_cast<size_t>(target_.replicas)) {
    return absl::UnavailableError(absl::StrCat(
        "the listing would miss the images of ",
        absl::StrJoin(unreachable, ", "), ": ", first_unavailable.message()));
  }
  ListPage page;
  bool more = false;
  for (auto& [id, entry] : merged) {
    if ((cutoff.has_value() && id > *cutoff) ||
        page.images.size() == page_size) {
      more = true;
      break;
    }
    page.images.push_back(std::move(entry.second));
  }
  if ((more || cutoff.has_value()) && !page.images.empty()) {
    page.next_page_token = page.images.back().image_id;
  }
  return page;
}

absl::Status Cluster::Delete(std::string_view image_id,
                             std::optional<uint64_t> if_generation_match) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  const std::vector<size_t> order = m.Order(image_id);
  const size_t replicas =
      std::min(order.size(), static_cast<size_t>(target_.replicas));
  std::vector<size_t> others = order;
  bool deleted = false;
  if (if_generation_match.has_value()) {
    absl::StatusOr<std::shared_ptr<Client>> primary = MemberClient(m, order[0]);
    if (!primary.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "a conditional delete is decided by the image's primary server, "
          "which cannot be reached: ",
          primary.status().message()));
    }
    absl::Status decided = (*primary)->Delete(image_id, if_generation_match);
    if (!decided.ok()) return decided;
    deleted = true;
    others.erase(others.begin());
  }
  std::vector<absl::Status> results(m.members.size());
  ForEachAtOnce(others, [&](size_t index) {
    absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, index);
    results[index] =
        client.ok() ? (*client)->Delete(image_id) : client.status();
    if (client.ok()) Note(m, index, results[index]);
  });
  absl::Status not_found = absl::NotFoundError(absl::StrCat(
      "delete ", Quoted(image_id), ": no image ", Quoted(image_id)));
  std::vector<std::string> unreachable_replicas;
  bool unreachable_elsewhere = false;
  absl::Status first_unavailable;
  for (size_t index : others) {
    const absl::Status& result = results[index];
    if (result.ok()) {
      deleted = true;
    } else if (absl::IsNotFound(result)) {
      not_found = result;
    } else if (absl::IsUnavailable(result)) {
      const bool replica = std::find(order.begin(), order.begin() + replicas,
                                     index) != order.begin() + replicas;
      if (replica) {
        unreachable_replicas.push_back(m.members[index]->target);
      } else {
        unreachable_elsewhere = true;
      }
      if (first_unavailable.ok()) first_unavailable = result;
    } else {
      return result;
    }
  }
  if (!unreachable_replicas.empty() || (!deleted && unreachable_elsewhere)) {
    return absl::UnavailableError(absl::StrCat(
        "delete ", Quoted(image_id), ": ",
        deleted ? "deleted where it could be, but " : "",
        unreachable_replicas.empty()
            ? std::string("a server")
            : absl::StrJoin(unreachable_replicas, ", "),
        " could not be reached and may keep a copy: delete again once it "
        "is back (",
        first_unavailable.message(), ")"));
  }
  return deleted ? absl::OkStatus() : not_found;
}

absl::StatusOr<ServerLimits> Cluster::GetLimits() {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  std::vector<size_t> all(m.members.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  std::vector<absl::StatusOr<ServerLimits>> limits(
      all.size(), absl::UnknownError("not asked"));
  ForEachAtOnce(all, [&](size_t i) {
    absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, i);
    limits[i] = client.ok() ? (*client)->GetLimits()
                            : absl::StatusOr<ServerLimits>(client.status());
  });
  std::optional<ServerLimits> combined;
  absl::Status first_error;
  for (const absl::StatusOr<ServerLimits>& one : limits) {
    if (!one.ok()) {
      if (first_error.ok()) first_error = one.status();
      continue;
    }
    if (!combined.has_value()) {
      combined = *one;
      combined->data_lane_port = 0;
      combined->data_lane_unix_path.clear();
      continue;
    }
    combined->max_image_bytes =
        std::min(combined->max_image_bytes, one->max_image_bytes);
    combined->max_chunk_bytes =
        std::min(combined->max_chunk_bytes, one->max_chunk_bytes);
    combined->max_memory_bytes += one->max_memory_bytes;
    combined->stored_bytes += one->stored_bytes;
    combined->reserved_bytes += one->reserved_bytes;
    combined->leased_generations += one->leased_generations;
    combined->leased_bytes += one->leased_bytes;
    combined->leased_superseded_bytes += one->leased_superseded_bytes;
    combined->restored_at = std::max(combined->restored_at, one->restored_at);
  }
  if (!combined.has_value()) {
    return absl::UnavailableError(absl::StrCat(
        "no server of the cluster answered: ", first_error.message()));
  }
  return *combined;
}

absl::StatusOr<std::unique_ptr<ImageWatch>> Cluster::Watch(
    const WatchOptions& options) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  std::vector<size_t> all(m.members.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  std::vector<WatchedMember> members(all.size());
  ForEachAtOnce(all, [&](size_t i) {
    members[i].target = m.members[i]->target;
    members[i].seed = m.seeds[i];
    absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, i);
    if (client.ok()) members[i].client = *std::move(client);
  });
  return WatchCluster(std::move(members), target_.replicas, options_, options);
}

}  // namespace h5depot::internal

namespace h5depot::internal {
namespace {

// One server's copy of an image, as a rebalance listed it.
struct Copy {
  size_t holder;  // a member's index, or members + a drained server's
  ImageInfo info;
};

// Every image under `prefix` on `server`, by id.
absl::Status ListAll(Client& server, const std::string& prefix, size_t holder,
                     std::map<std::string, std::vector<Copy>>* copies) {
  ListOptions options;
  options.prefix = prefix;
  options.page_size = kDefaultPageSize;
  while (true) {
    absl::StatusOr<ListPage> page = server.List(options);
    if (!page.ok()) return page.status();
    for (ImageInfo& info : page->images) {
      // A stream's steps are its own (they live on the stream's copies and
      // cannot be pushed): rebalancing moves images, not streams.
      std::string_view stream;
      uint64_t step = 0;
      if (internal::ParseStreamStepId(info.image_id, &stream, &step)) continue;
      std::string id = info.image_id;
      (*copies)[std::move(id)].push_back({holder, std::move(info)});
    }
    if (page->next_page_token.empty()) return absl::OkStatus();
    options.page_token = page->next_page_token;
  }
}

}  // namespace

absl::StatusOr<RebalanceReport> Cluster::Rebalance(
    const RebalanceOptions& options) {
  const std::shared_ptr<const Membership> current = Current();
  const Membership& m = *current;
  // Every server that holds copies, reachable before anything moves.
  std::vector<std::shared_ptr<Client>> holders;
  std::vector<std::string> names;
  for (size_t i = 0; i < m.members.size(); ++i) {
    absl::StatusOr<std::shared_ptr<Client>> client = MemberClient(m, i);
    if (!client.ok()) {
      return absl::UnavailableError(
          absl::StrCat("nothing moved: every member must be reachable: ",
                       client.status().message()));
    }
    holders.push_back(*std::move(client));
    names.push_back(m.members[i]->target);
  }
  for (const std::string& drained : options.drain) {
    if (std::find(names.begin(), names.end(), drained) != names.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("nothing moved: ", drained,
                       " is a member of the cluster; a drained server must "
                       "not be"));
    }
    absl::StatusOr<std::unique_ptr<Client>> client =
        Client::Connect(drained, options_);
    if (!client.ok()) {
      return absl::Status(
          client.status().code(),
          absl::StrCat("nothing moved: drained server ", drained, ": ",
                       client.status().message()));
    }
    holders.push_back(*std::move(client));
    names.push_back(drained);
  }
  std::map<std::string, std::vector<Copy>> copies;
  for (size_t holder = 0; holder < holders.size(); ++holder) {
    if (absl::Status listed =
            ListAll(*holders[holder], options.prefix, holder, &copies);
        !listed.ok()) {
      return absl::Status(listed.code(),
                          absl::StrCat("nothing moved: listing ", names[holder],
                                       ": ", listed.message()));
    }
  }

  RebalanceReport report;
  const auto fail = [&report](const absl::Status& status) {
    ++report.failed;
    if (report.first_error.empty()) {
      report.first_error = std::string(status.message());
    }
  };
  for (const auto& [id, held] : copies) {
    ++report.images;
    const std::vector<size_t> order = m.Order(id);
    const size_t replicas =
        std::min(order.size(), static_cast<size_t>(target_.replicas));
    const std::vector<size_t> wanted(order.begin(), order.begin() + replicas);
    // The newest copy (last writer wins, by generation: copies carry their
    // first one's, and a server numbers its changes after every
    // generation it took a copy of); on a tie, the one reads find first, a
    // member's before a drained server's.
    const auto rank = [&order](size_t holder) {
      return static_cast<size_t>(std::find(order.begin(), order.end(), holder) -
                                 order.begin());
    };
    const Copy* newest = &held.front();
    for (const Copy& copy : held) {
      if (copy.info.generation > newest->info.generation ||
          (copy.info.generation == newest->info.generation &&
           rank(copy.holder) < rank(newest->holder))) {
        newest = &copy;
      }
    }
    bool placed = true;
    std::optional<FetchedImage> fetched;
    for (size_t member : wanted) {
      const auto existing =
          std::find_if(held.begin(), held.end(),
                       [member](const Copy& c) { return c.holder == member; });
      if (existing != held.end() &&
          existing->info.generation >= newest->info.generation) {
        continue;  // up to date (the newest itself, or a copy of it)
      }
      if (!fetched.has_value()) {
        absl::StatusOr<FetchedImage> image = holders[newest->holder]->Fetch(id);
        if (absl::IsNotFound(image.status())) {  // deleted meanwhile
          ++report.changed;
          placed = false;
          break;
        }
        if (!image.ok()) {
          fail(image.status());
          placed = false;
          break;
        }
        fetched = *std::move(image);
      }
      // Only where the image is absent, or still the older copy listed;
      // under the generation it has where it came from.
      PushOptions push;
      push.if_generation_match =
          existing != held.end() ? existing->info.generation : 0;
      push.replica_generation = fetched->info.generation;
      absl::StatusOr<ImageInfo> pushed = holders[member]->Push(
          id, fetched->buffer.data(), fetched->buffer.size(), push);
      if (pushed.ok()) {
        ++(existing != held.end() ? report.copies_replaced
                                  : report.copies_made);
      } else if (absl::IsAlreadyExists(pushed.status()) ||
                 absl::IsAborted(pushed.status()) ||
                 absl::IsFailedPrecondition(pushed.status())) {
        ++report.changed;  // a client's newer push stands
      } else {
        fail(pushed.status());
        placed = false;
      }
    }
    if (!placed) continue;  // every copy stays until all replicas have it
    for (const Copy& copy : held) {
      if (std::find(wanted.begin(), wanted.end(), copy.holder) !=
          wanted.end()) {
        continue;
      }
      const absl::Status deleted =
          holders[copy.holder]->Delete(id, copy.info.generation);
      if (deleted.ok()) {
        ++report.copies_removed;
      } else if (absl::IsAborted(deleted) || absl::IsNotFound(deleted)) {
        ++report.changed;
      } else {
        fail(deleted);
      }
    }
  }
  return report;
}

}  // namespace h5depot::internal
