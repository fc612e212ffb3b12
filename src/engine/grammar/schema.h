#pragma once
// JSON Schema -> Grammar (nodes.h), for structured output. The subset agent frameworks send (OpenAI's strict
// subset and what zod / pydantic emit): type (one or several), properties / required / additionalProperties,
// items / minItems / maxItems, enum, const, minLength / maxLength, minimum / maximum / exclusiveMinimum /
// exclusiveMaximum on integers and numbers (exact: number_bounds.h), anyOf, allOf with one member, $ref into
// $defs / definitions (or any local JSON pointer, recursion allowed). description, title, default, examples,
// $schema, $id, $comment, deprecated, readOnly and writeOnly are ignored (they constrain nothing). Any other
// keyword is refused with a moe::Error naming the keyword and its place ("#/properties/when"): a schema is
// never silently relaxed. So is a schema with no finite value (a required property that nests itself forever).
//
// What is generated (always valid against the schema, sometimes narrower than it):
// - no whitespace outside strings (compact JSON: generation cannot run away in whitespace);
// - objects with `properties` carry only declared properties, each at most once, in any order; `required` ones
//   before the object closes. Without `properties`, an object takes free keys with additionalProperties'
//   schema as values when additionalProperties is true or a schema, or when it is absent and the schema is not
//   strict; strict (OpenAI's `strict: true`, the default) reads an absent additionalProperties as false;
// - strings are valid UTF-8 with JSON escapes; \u escapes of surrogates are not generated (the character is
//   written as UTF-8 instead); lengths count code points, an escape counting as one;
// - integers are written without a sign on zero or leading zeros, |x| < 10^18; numbers are at most 24 bytes;
//   numbers with bounds have no exponent, at most 15 significant digits and 15 decimals (number_bounds.h);
// - enum / const values are written as nlohmann::json dumps them (compact).
#include <nlohmann/json.hpp>

#include <memory>

#include "engine/grammar/nodes.h"

namespace moe::grammar {

struct SchemaOptions {
  bool strict = true;  // an absent additionalProperties means false
};

// An immutable compiled schema; cheap to copy (shared).
class Schema {
 public:
  static Schema compile(const nlohmann::json& schema, const SchemaOptions& options = {});
  static Schema any_object();  // response_format json_object: any JSON object
  static Schema any_value();   // any JSON value

  const Grammar& grammar() const { return *grammar_; }

 private:
  explicit Schema(std::shared_ptr<const Grammar> g) : grammar_(std::move(g)) {}
  std::shared_ptr<const Grammar> grammar_;
};

}  // namespace moe::grammar
