#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "h5depot/internal/byte_size.h"
#include "h5depot/internal/token.h"
#include "server/src/access_rules_internal.h"

namespace h5depot::server {
namespace {

constexpr size_t kMaxNameBytes = 64;
constexpr size_t kMaxPrefixBytes = 255;  // an image id's longest

bool IsNameCharacter(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
         c == '_' || c == '-' || c == '@';
}

// The characters of an image id (image_id.h): a prefix of a valid id.
bool IsPrefixCharacter(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
         c == '_' || c == '-' || c == '/';
}

bool IsTokenHash(std::string_view text) {
  const std::string_view prefix = internal::kTokenHashPrefix;
  if (text.size() != prefix.size() + 64 ||
      text.substr(0, prefix.size()) != prefix) {
    return false;
  }
  for (char c : text.substr(prefix.size())) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// Reads the LIMIT field `field` (KEY=VALUE) into `principal`; what is
// wrong with it otherwise.
std::optional<std::string> ParseLimit(std::string_view field,
                                      Principal& principal) {
  const size_t equals = field.find('=');
  const std::string_view key = field.substr(0, equals);
  const std::string_view text = field.substr(equals + 1);
  std::optional<uint64_t>* limit = nullptr;
  if (key == "max-memory") {
    limit = &principal.max_memory_bytes;
  } else if (key == "max-pending-pushes") {
    limit = &principal.max_pending_pushes;
  } else if (key == "max-waits") {
    limit = &principal.max_waits;
  } else {
    return absl::StrCat("unknown limit '", std::string(key),
                        "' (max-memory, max-pending-pushes or max-waits)");
  }
  if (limit->has_value()) {
    return absl::StrCat("limit '", std::string(key), "' is given twice");
  }
  uint64_t value = 0;
  if (text == "unlimited") {
    value = PrincipalLimits::kUnlimited;
  } else if (key == "max-memory") {
    std::optional<uint64_t> bytes = internal::ParseByteSize(text);
    if (!bytes.has_value()) {
      return absl::StrCat("max-memory=", std::string(text),
                          " is not a byte size such as 512M or 2G");
    }
    value = *bytes;
  } else if (text.empty() ||
             !std::all_of(text.begin(), text.end(),
                          [](char c) { return c >= '0' && c <= '9'; }) ||
             !absl::SimpleAtoi(absl::string_view(text.data(), text.size()),
                               &value)) {
    return absl::StrCat(std::string(field), " is not a whole number");
  }
  // 0 is refused rather than read: for the --principal-max-memory flag it
  // means no limit, and a principal allowed no push wants the role read.
  if (value == 0 && key != "max-waits") {
    return absl::StrCat(std::string(key),
                        " must be at least 1 (\"unlimited\" for no limit; "
                        "the role read for no push)");
  }
  *limit = value;
  return std::nullopt;
}

}  // namespace

PrincipalLimits Principal::LimitsOver(const PrincipalLimits& defaults) const {
  PrincipalLimits limits;
  limits.max_memory_bytes =
      max_memory_bytes.value_or(defaults.max_memory_bytes);
  limits.max_pending_pushes =
      max_pending_pushes.value_or(defaults.max_pending_pushes);
  limits.max_waits = max_waits.value_or(defaults.max_waits);
  return limits;
}

std::string_view RoleName(Role role) {
  switch (role) {
    case Role::kRead:
      return "read";
    case Role::kWrite:
      return "write";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

bool Principal::MayTouch(std::string_view image_id) const {
  if (prefixes.empty()) return true;
  for (const std::string& prefix : prefixes) {
    if (image_id.substr(0, prefix.size()) == prefix) return true;
  }
  return false;
}

absl::StatusOr<std::unique_ptr<AccessRules>> AccessRules::Parse(
    std::string_view text, std::string_view source) {
  std::unique_ptr<AccessRules> rules(new AccessRules());
  absl::flat_hash_set<std::string> names;
  int line_number = 0;
  for (absl::string_view line :
       absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    ++line_number;
    auto bad = [&](std::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(
          std::string(source), ", line ", line_number, ": ", std::string(why),
          " (expected: NAME ROLE sha256:HASH [PREFIX | LIMIT=VALUE ...])"));
    };
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() < 3) return bad("too few fields");
    Principal principal;
    principal.name = std::string(fields[0]);
    if (principal.name.size() > kMaxNameBytes) {
      return bad(absl::StrCat("the name is longer than ", kMaxNameBytes,
                              " characters"));
    }
    for (char c : principal.name) {
      if (!IsNameCharacter(c)) {
        return bad("a name is made of A-Z a-z 0-9 . _ - @");
      }
    }
    if (!names.insert(principal.name).second) {
      return bad(
          absl::StrCat("principal '", principal.name, "' is named twice"));
    }
    if (fields[1] == "read") {
      principal.role = Role::kRead;
    } else if (fields[1] == "write") {
      principal.role = Role::kWrite;
    } else if (fields[1] == "admin") {
      principal.role = Role::kAdmin;
    } else {
      return bad(absl::StrCat("unknown role '", std::string(fields[1]),
                              "' (read, write or admin)"));
    }
    std::string hash(fields[2]);
    const bool is_public = hash == kPublicTokenHash;
    if (!is_public && !IsTokenHash(hash)) {
      return bad(
          "the token hash is not 'sha256:' and 64 lowercase hex digits "
          "(h5depot new-token prints one), nor 'public'");
    }
    if (is_public && principal.role != Role::kRead) {
      return bad("a public principal may only read: its role must be 'read'");
    }
    if (is_public && fields.size() == 3) {
      return bad(
          "a public principal names the prefixes everyone may read ('*' for "
          "every id)");
    }
    bool every_id = false;
    for (size_t i = 3; i < fields.size(); ++i) {
      if (fields[i] == "*") {
        every_id = true;
        continue;
      }
      if (fields[i].find('=') != absl::string_view::npos) {
        if (std::optional<std::string> wrong =
                ParseLimit(std::string_view(fields[i].data(), fields[i].size()),
                           principal);
            wrong.has_value()) {
          return bad(*wrong);
        }
        continue;
      }
      if (fields[i].size() > kMaxPrefixBytes) {
        return bad("a prefix is longer than an image id can be");
      }
      for (char c : fields[i]) {
        if (!IsPrefixCharacter(c)) {
          return bad(absl::StrCat("prefix '", std::string(fields[i]),
                                  "' has a character no image id has"));
        }
      }
      principal.prefixes.emplace_back(fields[i]);
    }
    if (every_id) principal.prefixes.clear();
    if (is_public) {
      if (rules->public_.has_value()) {
        return bad(absl::StrCat("principal '", rules->public_->name,
                                "' is the public one already"));
      }
      rules->public_ = std::move(principal);
      continue;
    }
    if (!rules->by_token_hash_.emplace(std::move(hash), std::move(principal))
             .second) {
      return bad("this token hash is given to another principal already");
    }
  }
  if (rules->by_token_hash_.empty() && !rules->public_.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source),
                     " names no principal: nobody could use the server"));
  }
  return rules;
}

absl::StatusOr<std::unique_ptr<AccessRules>> AccessRules::Load(
    const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::NotFoundError(
        absl::StrCat("cannot read the auth file ", path));
  }
  std::ostringstream text;
  text << file.rdbuf();
  return Parse(text.str(), path);
}

const Principal* AccessRules::Find(std::string_view token) const {
  auto found = by_token_hash_.find(internal::TokenHash(token));
  return found == by_token_hash_.end() ? nullptr : &found->second;
}

}  // namespace h5depot::server
