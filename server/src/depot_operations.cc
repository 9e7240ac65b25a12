#include <algorithm>
#include <functional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "h5depot/internal/image_id.h"
#include "server/src/depot_operations_internal.h"

namespace h5depot::server {

bool IsLocalPeer(std::string_view peer) {
  for (std::string_view local :
       {"unix:", "fd:", "ipv4:127.", "ipv6:[::1]", "ipv6:[::ffff:127."}) {
    if (peer.substr(0, local.size()) == local) return true;
  }
  return false;
}

std::string Caller::peer() const {
  return lookup_ == nullptr ? std::string(peer_) : lookup_(context_);
}

bool Caller::local() const {
  return lookup_ == nullptr ? local_ : IsLocalPeer(lookup_(context_));
}

DepotOperations::DepotOperations(ImageStore* store, size_t max_waits,
                                 std::unique_ptr<const AccessRules> access,
                                 PrincipalLimits principal_limits)
    : store_(store),
      max_waits_(max_waits),
      checks_access_(access != nullptr),
      principal_limits_(principal_limits) {
  if (access != nullptr) {
    access_.store(access.get(), std::memory_order_release);
    absl::MutexLock lock(&all_access_mutex_);
    all_access_.push_back(std::move(access));
  }
}

absl::Status DepotOperations::ReplaceAccessRules(
    std::unique_ptr<const AccessRules> access) {
  if (!checks_access_ || access == nullptr) {
    return absl::FailedPreconditionError(
        "access rules can only replace access rules: a server started "
        "without an auth file is not given one later, nor one with an auth "
        "file left without");
  }
  absl::MutexLock lock(&all_access_mutex_);
  access_.store(access.get(), std::memory_order_release);
  all_access_.push_back(std::move(access));
  return absl::OkStatus();
}

DepotOperations::~DepotOperations() = default;

DepotOperations::PrincipalState::PrincipalState(const std::string& name)
    : quota(std::make_shared<Quota>(absl::StrCat("principal '", name, "'"))) {}

std::shared_ptr<DepotOperations::PrincipalState> DepotOperations::StateOf(
    const Principal& principal) {
  const PrincipalLimits limits = principal.LimitsOver(principal_limits_);
  std::shared_ptr<PrincipalState> known;
  {
    // The common case, a principal seen before: shared, so that the
    // pushes of many clients do not queue on each other here.
    absl::ReaderMutexLock lock(&principals_mutex_);
    auto it = principals_.find(principal.name);
    if (it != principals_.end()) known = it->second;
  }
  if (known != nullptr) {
    ApplyLimits(*known, limits);
    return known;
  }
  absl::MutexLock lock(&principals_mutex_);
  auto it = principals_.find(principal.name);
  if (it == principals_.end()) {
    // Names come and go only with the access rules; forget those that
    // hold nothing, once in a while.
    if (principals_.size() >= next_sweep_) {
      absl::erase_if(principals_, [](const auto& entry) {
        return entry.second.use_count() == 1 &&
               entry.second->quota.use_count() == 1;
      });
      next_sweep_ = std::max<size_t>(64, 2 * principals_.size());
    }
    it = principals_
             .emplace(principal.name,
                      std::make_shared<PrincipalState>(principal.name))
             .first;
  }
  ApplyLimits(*it->second, limits);
  return it->second;
}

void DepotOperations::ApplyLimits(PrincipalState& state,
                                  const PrincipalLimits& limits) {
  // Written only when they changed (a reload), so that the common case
  // leaves the state's cache lines unshared among the CPUs.
  if (state.quota->max_memory_bytes() != limits.max_memory_bytes ||
      state.quota->max_pending_pushes() != limits.max_pending_pushes) {
    state.quota->SetLimits(limits.max_memory_bytes, limits.max_pending_pushes);
  }
  if (state.max_waits.load(std::memory_order_relaxed) != limits.max_waits) {
    state.max_waits.store(limits.max_waits, std::memory_order_relaxed);
  }
}

namespace {

// Whether `op`'s id names one image. A list's or a watch's prefix only
// narrows what it shows (List cuts its answer, a watch its events), so it
// is not checked against the principal's prefixes.
bool NamesAnImage(Operation op) {
  return op != Operation::kList && op != Operation::kWatch &&
         op != Operation::kGetLimits;
}

// What each role may do beyond the one below it.
bool RoleAllows(Role role, Operation op) {
  switch (op) {
    case Operation::kFetch:
    case Operation::kRead:
    case Operation::kStat:
    case Operation::kList:
    case Operation::kGetLimits:
    case Operation::kWatch:
      return true;
    case Operation::kPush:
    case Operation::kDelete:
      return role == Role::kWrite || role == Role::kAdmin;
  }
  return role == Role::kAdmin;
}

std::string_view OperationName(Operation op) {
  switch (op) {
    case Operation::kPush:
      return "push";
    case Operation::kFetch:
      return "fetch";
    case Operation::kRead:
      return "read";
    case Operation::kStat:
      return "stat";
    case Operation::kList:
      return "list";
    case Operation::kDelete:
      return "delete";
    case Operation::kGetLimits:
      return "ask for the limits";
    case Operation::kWatch:
      return "watch";
  }
  return "do this";
}

}  // namespace

absl::StatusOr<const Principal*> DepotOperations::Admit(
    const Caller& caller, Operation op, std::string_view image_id) const {
  const std::string_view token = caller.token();
  const AccessRules* rules = access_.load(std::memory_order_acquire);
  if (token.empty()) {
    // Without a token a caller may do what the public principal may, if
    // there is one; whatever that does not allow needs a token.
    const Principal* everyone = rules->FindPublic();
    if (everyone != nullptr && RoleAllows(everyone->role, op) &&
        (!NamesAnImage(op) || everyone->MayTouch(image_id))) {
      return everyone;
    }
    return absl::UnauthenticatedError(
        everyone == nullptr
            ? "this server needs a token (ClientOptions::token, the C API's "
              "or the remote driver's token, H5DEPOT_TOKEN / "
              "H5DEPOT_TOKEN_FILE, or an Authorization: Bearer header)"
            : "this needs a token: without one a caller may only read the "
              "images the server makes public");
  }
  if (caller.rules_seen_ != rules) {
    caller.principal_seen_ = rules->Find(token);
    caller.rules_seen_ = rules;
  }
  const Principal* principal = caller.principal_seen_;
  if (principal == nullptr) {
    return absl::UnauthenticatedError(
        "the token is not one this server knows (h5depotd --auth-file)");
  }
  if (!RoleAllows(principal->role, op)) {
    return absl::PermissionDeniedError(
        absl::StrCat("principal '", principal->name, "' has the role ",
                     std::string(RoleName(principal->role)), ", which may not ",
                     std::string(OperationName(op))));
  }
  if (NamesAnImage(op) && !principal->MayTouch(image_id)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "principal '", principal->name, "' may not ",
        std::string(OperationName(op)), " '", std::string(image_id),
        "': it is outside the principal's image id prefixes"));
  }
  return principal;
}

ImageDescription DepotOperations::Describe(const StoredImage& image,
                                           ChecksumNeed checksum) {
  ImageDescription description;
  description.image_id = image.image_id();
  description.size = image.size();
  description.generation = image.generation();
  description.checksum = checksum == ChecksumNeed::kCompute
                             ? image.checksum()
                             : image.known_checksum().value_or(0);
  description.created_unix_micros = absl::ToUnixMicros(image.created());
  description.expires_unix_micros = image.expires() == absl::InfiniteFuture()
                                        ? 0
                                        : absl::ToUnixMicros(image.expires());
  return description;
}

ByteRange DepotOperations::ClampRange(const StoredImage& image, uint64_t offset,
                                      uint64_t length) {
  const uint64_t size = image.size();
  if (offset >= size) return {size, 0};
  return {offset, std::min(length, size - offset)};
}

absl::Time DepotOperations::WaitDeadline(uint64_t wait_ms) {
  return absl::Now() + absl::Milliseconds(std::min(wait_ms, kMaxWaitMs));
}

absl::StatusOr<PushRequest> DepotOperations::PushRequestFor(
    const Caller& caller, PushParams params) {
  const Principal* principal = nullptr;
  if (checks_access_) {
    absl::StatusOr<const Principal*> admitted =
        Admit(caller, Operation::kPush, params.image_id);
    if (!admitted.ok()) return admitted.status();
    principal = *admitted;
  }
  PushRequest request;
  if (principal != nullptr) request.quota = StateOf(*principal)->quota;
  request.image_id = std::move(params.image_id);
  request.size = params.size;
  request.checksum = params.checksum;
  request.if_generation_match = params.if_generation_match;
  request.replica_generation = params.replica_generation;
  request.stream_append = params.stream_append;
  request.replica_step = params.replica_step;
  request.ttl = absl::Milliseconds(std::min(params.ttl_ms, kMaxTtlMs));
  return request;
}

absl::StatusOr<std::unique_ptr<PendingImage>> DepotOperations::BeginPush(
    const Caller& caller, PushParams params, PushCutOff cut_off) {
  absl::StatusOr<PushRequest> request =
      PushRequestFor(caller, std::move(params));
  if (!request.ok()) return request.status();
  return store_->BeginPush(*std::move(request), std::move(cut_off));
}

absl::StatusOr<ImageRef> DepotOperations::PublishSealed(
    const Caller& caller, PushParams params, internal::UniqueFd memfd,
    internal::UniqueFd release_signal) {
  absl::StatusOr<PushRequest> request =
      PushRequestFor(caller, std::move(params));
  if (!request.ok()) return request.status();
  return store_->PublishSealed(*std::move(request), std::move(memfd),
                               std::move(release_signal));
}

absl::StatusOr<ImageRef> DepotOperations::FinishPush(
    PendingImage& pending, std::optional<uint64_t> trailing_checksum) {
  return trailing_checksum.has_value() ? pending.Publish(*trailing_checksum)
                                       : pending.Publish();
}

absl::StatusOr<ImageRef> DepotOperations::Find(const Caller& caller,
                                               Operation op,
                                               std::string_view image_id) {
  if (absl::Status allowed = Authorize(caller, op, image_id); !allowed.ok()) {
    return allowed;
  }
  return store_->Get(image_id);
}

namespace {

// `image` (the current generation of `image_id`, or why there is none) if
// it is newer than `newer_than`; FAILED_PRECONDITION if it is not.
absl::StatusOr<ImageRef> IfNewerThan(absl::StatusOr<ImageRef> image,
                                     std::string_view image_id,
                                     uint64_t newer_than) {
  if (!image.ok() || (*image)->generation() > newer_than) return image;
  return absl::FailedPreconditionError(absl::StrCat(
      "image '", std::string(image_id), "' has no generation newer than ",
      newer_than, " (current: ", (*image)->generation(), ")"));
}

}  // namespace

ImageStore::WaitId DepotOperations::AwaitImage(const Caller& caller,
                                               Operation op,
                                               std::string_view image_id,
                                               ImageWait wait,
                                               ImageStore::WaitCallback done) {
  const Principal* principal = nullptr;
  if (checks_access_) {
    absl::StatusOr<const Principal*> admitted = Admit(caller, op, image_id);
    if (!admitted.ok()) {
      done(admitted.status());
      return 0;
    }
    principal = *admitted;
  }
  if (wait.wait_ms == 0) {
    done(IfNewerThan(store_->Get(image_id), image_id, wait.newer_than));
    return 0;
  }
  std::shared_ptr<PrincipalState> state =
      principal == nullptr ? nullptr : StateOf(*principal);
  // Counted before it is registered, so that waits arriving together
  // cannot pass the cap together.
  if (waits_.fetch_add(1) >= max_waits_) {
    waits_.fetch_sub(1);
    absl::StatusOr<ImageRef> image =
        IfNewerThan(store_->Get(image_id), image_id, wait.newer_than);
    if (!image.ok()) {
      image = absl::ResourceExhaustedError(absl::StrCat(
          image.status().message(), ", and the server is at its limit of ",
          max_waits_,
          " fetches and stats waiting at once (h5depotd --max-waits)"));
    }
    done(std::move(image));
    return 0;
  }
  if (state != nullptr &&
      state->waits.fetch_add(1) >=
          state->max_waits.load(std::memory_order_relaxed)) {
    state->waits.fetch_sub(1);
    waits_.fetch_sub(1);
    absl::StatusOr<ImageRef> image =
        IfNewerThan(store_->Get(image_id), image_id, wait.newer_than);
    if (!image.ok()) {
      image = absl::ResourceExhaustedError(absl::StrCat(
          image.status().message(), ", and ", state->quota->owner(),
          " is at its limit of ",
          state->max_waits.load(std::memory_order_relaxed),
          " fetches and stats waiting at once (h5depotd "
          "--principal-max-waits, or max-waits= in the auth file)"));
    }
    done(std::move(image));
    return 0;
  }
  return store_->Await(image_id, wait.newer_than, WaitDeadline(wait.wait_ms),
                       [this, state = std::move(state), done = std::move(done)](
                           absl::StatusOr<ImageRef> answer) mutable {
                         // Free before the caller learns the answer, so that it
                         // may wait again at once.
                         if (state != nullptr) state->waits.fetch_sub(1);
                         waits_.fetch_sub(1);
                         done(std::move(answer));
                       });
}

void DepotOperations::CancelWait(ImageStore::WaitId wait) {
  if (wait == 0) return;
  store_->CancelWait(
      wait, absl::CancelledError("the wait was cancelled by the client"));
}

absl::StatusOr<ImageRef> DepotOperations::OpenReader(const Caller& caller,
                                                     std::string_view image_id,
                                                     uint64_t generation) {
  if (absl::Status allowed = Authorize(caller, Operation::kRead, image_id);
      !allowed.ok()) {
    return allowed;
  }
  return store_->GetGeneration(image_id, generation);
}

absl::StatusOr<ImageRange> DepotOperations::Read(const Caller& caller,
                                                 std::string_view image_id,
                                                 uint64_t generation,
                                                 uint64_t offset,
                                                 uint64_t length) {
  absl::StatusOr<ImageRef> image = OpenReader(caller, image_id, generation);
  if (!image.ok()) return image.status();
  const ByteRange range = ClampRange(**image, offset, length);
  return ImageRange{*std::move(image), range};
}

absl::StatusOr<ListResult> DepotOperations::List(const Caller& caller,
                                                 std::string_view prefix,
                                                 uint32_t page_size,
                                                 std::string_view page_token) {
  const Principal* principal = nullptr;
  if (checks_access_) {
    absl::StatusOr<const Principal*> admitted =
        Admit(caller, Operation::kList, prefix);
    if (!admitted.ok()) return admitted.status();
    principal = *admitted;
  }
  absl::StatusOr<ListResult> listed =
      store_->List(prefix, page_size, page_token);
  if (!listed.ok() || principal == nullptr || principal->prefixes.empty()) {
    return listed;
  }
  // Only what the caller may see; a page may come out shorter than asked
  // (even empty, with a next page token), never longer.
  std::vector<ImageRef>& images = listed->images;
  images.erase(std::remove_if(images.begin(), images.end(),
                              [&principal](const ImageRef& image) {
                                return !principal->MayTouch(image->image_id());
                              }),
               images.end());
  return listed;
}

absl::Status DepotOperations::Delete(
    const Caller& caller, std::string_view image_id,
    std::optional<uint64_t> if_generation_match) {
  if (absl::Status allowed = Authorize(caller, Operation::kDelete, image_id);
      !allowed.ok()) {
    return allowed;
  }
  return store_->Delete(image_id, if_generation_match);
}

absl::StatusOr<StoreLimits> DepotOperations::Limits(const Caller& caller) {
  if (absl::Status allowed = Authorize(caller, Operation::kGetLimits, {});
      !allowed.ok()) {
    return allowed;
  }
  StoreLimits limits;
  limits.max_image_bytes = store_->options().max_image_bytes;
  limits.max_memory_bytes = store_->options().max_memory_bytes;
  const StoreStats stats = store_->Stats();
  limits.image_count = stats.image_count;
  limits.stored_bytes = stats.stored_bytes;
  limits.reserved_bytes = stats.reserved_bytes;
  limits.leased_generations = stats.leased_generations;
  limits.leased_bytes = stats.leased_bytes;
  limits.leased_superseded_bytes = stats.leased_superseded_bytes;
  limits.restored_at = store_->restored_at();
  return limits;
}

absl::StatusOr<EventFeed> DepotOperations::Watch(
    const Caller& caller, std::string_view prefix,
    std::optional<uint64_t> after) {
  const Principal* principal = nullptr;
  if (checks_access_) {
    absl::StatusOr<const Principal*> admitted =
        Admit(caller, Operation::kWatch, prefix);
    if (!admitted.ok()) return admitted.status();
    if (!(*admitted)->prefixes.empty()) principal = *admitted;
  }
  if (prefix.size() > internal::kMaxImageIdLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("a watched prefix is at most ",
                     internal::kMaxImageIdLength, " bytes, as an image id"));
  }
  return EventFeed(store_, std::string(prefix), principal,
                   after.has_value() ? *after : store_->LatestSequence());
}

absl::StatusOr<EventPage> EventFeed::Next(size_t max_events) {
  // How many changes one read looks at, matching or not: a watch of a
  // quiet prefix on a busy store holds the store's lock only this long.
  constexpr size_t kMaxScan = 4096;
  std::function<bool(std::string_view)> visible;
  if (principal_ != nullptr) {
    visible = [principal = principal_](std::string_view image_id) {
      return principal->MayTouch(image_id);
    };
  }
  absl::StatusOr<EventPage> page =
      store_->ReadEvents(prefix_, position_, max_events, kMaxScan, visible);
  if (page.ok()) position_ = page->position;
  return page;
}

absl::StatusOr<StreamState> DepotOperations::CreateStream(
    const Caller& caller, std::string_view stream, const StreamPolicy& policy) {
  if (absl::Status allowed = Authorize(caller, Operation::kPush, stream);
      !allowed.ok()) {
    return allowed;
  }
  return store_->streams().Create(stream, policy);
}

absl::StatusOr<StreamState> DepotOperations::FinishStream(
    const Caller& caller, std::string_view stream) {
  if (absl::Status allowed = Authorize(caller, Operation::kPush, stream);
      !allowed.ok()) {
    return allowed;
  }
  return store_->streams().Finish(stream);
}

absl::Status DepotOperations::DeleteStream(const Caller& caller,
                                           std::string_view stream,
                                           std::string_view group) {
  if (absl::Status allowed = Authorize(caller, Operation::kDelete, stream);
      !allowed.ok()) {
    return allowed;
  }
  return group.empty() ? store_->streams().Delete(stream)
                       : store_->streams().DeleteGroup(stream, group);
}

absl::StatusOr<StreamState> DepotOperations::DescribeStream(
    const Caller& caller, std::string_view stream) {
  if (absl::Status allowed = Authorize(caller, Operation::kStat, stream);
      !allowed.ok()) {
    return allowed;
  }
  return store_->streams().Describe(stream);
}

StreamTable::WaitId DepotOperations::NextStep(const Caller& caller,
                                              NextRequest request,
                                              uint64_t wait_ms,
                                              StreamTable::NextCallback done) {
  if (absl::Status allowed =
          Authorize(caller, Operation::kFetch, request.stream);
      !allowed.ok()) {
    done(allowed);
    return 0;
  }
  return store_->streams().Next(request, WaitDeadline(wait_ms),
                                std::move(done));
}

absl::Status DepotOperations::AckStep(const Caller& caller,
                                      std::string_view stream,
                                      std::string_view group,
                                      std::string_view consumer,
                                      uint64_t step) {
  if (absl::Status allowed = Authorize(caller, Operation::kFetch, stream);
      !allowed.ok()) {
    return allowed;
  }
  return store_->streams().Ack(stream, group, consumer, step);
}

absl::Status DepotOperations::AckStepCopy(const Caller& caller,
                                          std::string_view stream,
                                          std::string_view group,
                                          uint64_t step) {
  if (absl::Status allowed = Authorize(caller, Operation::kFetch, stream);
      !allowed.ok()) {
    return allowed;
  }
  return store_->streams().AckCopy(stream, group, step);
}

StreamTable::WaitId DepotOperations::AwaitStreamRoom(
    const Caller& caller, std::string_view stream, uint64_t size,
    uint64_t wait_ms, StreamTable::RoomCallback done) {
  if (absl::Status allowed = Authorize(caller, Operation::kPush, stream);
      !allowed.ok()) {
    done(allowed, /*waited=*/false);
    return 0;
  }
  return store_->streams().AwaitRoom(stream, size, WaitDeadline(wait_ms),
                                     std::move(done));
}

void DepotOperations::CancelStreamWait(StreamTable::WaitId wait) {
  if (wait == 0) return;
  store_->streams().CancelWait(
      wait, absl::CancelledError("the wait was cancelled by the client"));
}

}  // namespace h5depot::server
