#include "entry_extractor.h"

#include <clang/AST/ASTContext.h>
#include <clang/AST/Attr.h>
#include <clang/AST/DeclTemplate.h>
#include <clang/AST/RecursiveASTVisitor.h>
#include <clang/Basic/SourceManager.h>
#include <clang/Lex/Lexer.h>
#include <llvm/Support/FileSystem.h>
#include <llvm/Support/Path.h>

#include <algorithm>
#include <set>

namespace flashbias::manifest_tool {
namespace {

using namespace clang;

constexpr llvm::StringLiteral kAnnotationPrefix = "flashbias.kernel:";

std::string collapse_whitespace(llvm::StringRef s) {
  std::string out;
  bool space = false;
  for (char c : s) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

bool is_identifier(llvm::StringRef s) {
  if (s.empty() || !(std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_')) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

std::string join_values(const std::vector<long long>& v) {
  std::vector<std::string> s;
  for (long long x : v) s.push_back(std::to_string(x));
  return "{" + join(s) + "}";
}

const AnnotateAttr* kernel_annotation(const Decl* d) {
  for (const auto* a : d->specific_attrs<AnnotateAttr>())
    if (a->getAnnotation().startswith(kAnnotationPrefix)) return a;
  return nullptr;
}

/// The integral type of a non-type template parameter as the host holds it (enums by their
/// underlying type: the host has no access to device-side enum declarations); nullopt when the
/// type is dependent or not integral (a float or pointer parameter cannot be a host value).
std::optional<IntType> int_type(QualType t, const ASTContext& ctx) {
  if (t.isNull() || t->isDependentType()) return std::nullopt;
  t = t.getCanonicalType().getUnqualifiedType();
  if (const auto* et = t->getAs<EnumType>()) {
    if (!et->getDecl()->isComplete()) return std::nullopt;
    t = et->getDecl()->getIntegerType().getCanonicalType();
  }
  if (!t->isIntegralType(ctx)) return std::nullopt;
  IntType it;
  it.bits = t->isBooleanType() ? 1 : static_cast<unsigned>(ctx.getIntWidth(t));
  it.is_signed = t->isSignedIntegerType();
  PrintingPolicy pp(ctx.getLangOpts());
  pp.Bool = true;
  it.spelling = t.getAsString(pp);
  return it;
}

class Extractor : public RecursiveASTVisitor<Extractor> {
 public:
  Extractor(ASTContext& ctx, std::string root, std::vector<Entry>& out, Problems& problems)
      : ctx_(ctx), sm_(ctx.getSourceManager()), root_(std::move(root)), out_(out), problems_(problems) {
    policy_.Bool = true;
    policy_.SuppressTagKeyword = true;
  }

  bool VisitCXXRecordDecl(CXXRecordDecl* rd) {
    const AnnotateAttr* attr = kernel_annotation(rd);
    if (!attr) return true;
    // Instantiations and specializations carry the annotation of their primary template; the
    // primary template alone declares the entry.
    if (isa<ClassTemplateSpecializationDecl>(rd)) return true;
    ClassTemplateDecl* tmpl = rd->getDescribedClassTemplate();
    if (!tmpl) {
      problems_.error(pos(rd->getLocation()),
                      "FLASHBIAS_KERNEL marks '" + rd->getQualifiedNameAsString() +
                          "', which is not a class template; an entry must be a class template "
                          "whose template parameters the generator instantiates");
      return true;
    }
    if (!rd->isThisDeclarationADefinition()) return true;
    extract(tmpl, rd, attr);
    return true;
  }

 private:
  SourcePos pos(SourceLocation loc) const {
    SourcePos p;
    loc = sm_.getExpansionLoc(loc);
    p.line = sm_.getExpansionLineNumber(loc);
    llvm::SmallString<256> file(sm_.getFilename(loc));
    llvm::SmallString<256> real;
    if (!llvm::sys::fs::real_path(file, real)) file = real;
    llvm::StringRef rel(file);
    if (rel.consume_front(root_) && rel.consume_front("/"))
      p.file = rel.str();
    else
      p.file = std::string(file.str());
    return p;
  }

  std::string text(SourceRange r) const {
    return collapse_whitespace(
        Lexer::getSourceText(sm_.getExpansionRange(r), sm_, ctx_.getLangOpts()));
  }

  void extract(ClassTemplateDecl* tmpl, CXXRecordDecl* rd, const AnnotateAttr* attr) {
    record_ = rd;
    Entry e;
    e.name = rd->getQualifiedNameAsString();
    e.pos = pos(rd->getLocation());
    const std::string where = "'" + e.name + "' (" + e.pos.str() + ")";

    llvm::StringRef spec = attr->getAnnotation();
    spec.consume_front(kAnnotationPrefix);
    auto [direction, family] = spec.split(':');
    if (!is_identifier(direction) || !is_identifier(family)) {
      problems_.error(e.pos, "FLASHBIAS_KERNEL(\"" + direction.str() + "\", \"" + family.str() +
                                 "\") on " + where +
                                 ": direction and arch family must be identifiers such as "
                                 "FLASHBIAS_KERNEL(\"fwd\", \"sm80\"); they name the entry in the "
                                 "generated header (flashbias::manifest::sm80::fwd)");
      return;
    }
    e.direction = direction.str();
    e.family = family.str();

    if (!read_params(tmpl, e, where)) return;
    read_knobs(rd, e, where);
    read_rules(rd, e, where);
    out_.push_back(std::move(e));
  }

  bool read_params(ClassTemplateDecl* tmpl, Entry& e, const std::string& where) {
    params_.clear();
    param_types_.clear();
    bool ok = true;
    for (NamedDecl* nd : *tmpl->getTemplateParameters()) {
      Param p;
      p.name = nd->getNameAsString();
      if (auto* tp = dyn_cast<TemplateTypeParmDecl>(nd)) {
        p.kind = ParamKind::type;
        p.type = tp->wasDeclaredWithTypename() ? "typename" : "class";
        if (tp->isParameterPack()) ok = false;
        if (tp->hasDefaultArgument()) p.default_text = tp->getDefaultArgument().getAsString(policy_);
      } else if (auto* np = dyn_cast<NonTypeTemplateParmDecl>(nd)) {
        p.kind = ParamKind::non_type;
        p.type = np->getType().getAsString(policy_);
        if (np->isParameterPack()) ok = false;
        if (auto it = int_type(np->getType(), ctx_)) {
          p.host_type = it->spelling;
          param_types_[p.name] = *it;
        }
        if (np->hasDefaultArgument()) {
          const Expr* d = np->getDefaultArgument();
          p.default_text = text(d->getSourceRange());
          Expr::EvalResult r;
          if (!d->isValueDependent() && d->EvaluateAsInt(r, ctx_))
            p.default_value = r.Val.getInt().getExtValue();
        }
      } else {
        problems_.error(pos(nd->getLocation()),
                        "template template parameter '" + p.name + "' of " + where +
                            ": entries take only type and integral parameters, which the "
                            "generator can spell from a KernelSpec");
        return false;
      }
      if (p.name.empty()) {
        problems_.error(pos(nd->getLocation()),
                        "unnamed template parameter of " + where +
                            ": the generator and the knob table refer to parameters by name");
        return false;
      }
      if (!ok) {
        problems_.error(pos(nd->getLocation()),
                        "template parameter pack '" + p.name + "' of " + where +
                            ": an entry's parameters must be a fixed list the generator fills");
        return false;
      }
      params_.insert(nd);
      e.params.push_back(std::move(p));
    }
    return true;
  }

  void read_knobs(CXXRecordDecl* rd, Entry& e, const std::string& where) {
    const TypedefNameDecl* alias = nullptr;
    for (Decl* d : rd->decls())
      if (auto* td = dyn_cast<TypedefNameDecl>(d); td && td->getName() == "Knobs") alias = td;
    if (!alias) return;  // an entry with nothing to tune
    const SourcePos alias_pos = pos(alias->getLocation());
    QualType t = alias->getUnderlyingType();
    const CXXRecordDecl* table = t->isDependentType() ? nullptr : t->getAsCXXRecordDecl();
    if (!table || !table->hasDefinition()) {
      problems_.error(alias_pos,
                      "'using Knobs = " + t.getAsString(policy_) + ";' in " + where +
                          ": Knobs must name a complete, non-template struct of constexpr arrays "
                          "(the tuner reads the candidate values without instantiating the entry)");
      return;
    }
    table = table->getDefinition();
    e.knob_table = table->getQualifiedNameAsString();
    for (const Decl* d : table->decls()) {
      if (const auto* f = dyn_cast<FieldDecl>(d)) {
        problems_.error(pos(f->getLocation()),
                        "'" + e.knob_table + "::" + f->getNameAsString() +
                            "' is a non-static member; a knob table holds only 'static constexpr' "
                            "arrays of candidate values");
        continue;
      }
      const auto* vd = dyn_cast<VarDecl>(d);
      if (!vd) continue;
      read_knob(vd, e, where);
    }
    std::sort(e.knobs.begin(), e.knobs.end(),
              [](const Knob& a, const Knob& b) { return a.param < b.param; });
    for (std::size_t k = 0; k < e.knobs.size(); ++k) e.params[e.knobs[k].param].knob = static_cast<int>(k);
  }

  void read_knob(const VarDecl* vd, Entry& e, const std::string& where) {
    Knob k;
    k.name = vd->getNameAsString();
    k.pos = pos(vd->getLocation());
    const std::string knob = "'" + e.knob_table + "::" + k.name + "' (" + k.pos.str() + ")";
    const int pi = e.param_index(k.name);
    if (pi < 0) {
      std::vector<std::string> names;
      for (const auto& p : e.params) names.push_back(p.name);
      problems_.error(k.pos, "knob array " + knob + " names no template parameter of " + where +
                                 "; its parameters are: " + join(names) +
                                 ". A knob array must be named exactly like the parameter it tunes: "
                                 "rename one of them, or delete the array");
      return;
    }
    Param& p = e.params[pi];
    if (p.kind != ParamKind::non_type || p.host_type.empty()) {
      problems_.error(k.pos, "knob array " + knob + " tunes '" + p.name + "' of " + where +
                                 ", which is a " + p.type +
                                 " parameter; only integral and bool parameters can be knobs");
      return;
    }
    const ConstantArrayType* at = ctx_.getAsConstantArrayType(vd->getType());
    if (!vd->isConstexpr() || !at || !at->getElementType()->isIntegralOrEnumerationType()) {
      problems_.error(k.pos, "knob " + knob +
                                 " must be a 'static constexpr' array of integers, e.g. "
                                 "'static constexpr int " + k.name + "[] = {64, 128};'");
      return;
    }
    const APValue* v = vd->evaluateValue();
    if (!v || !v->isArray()) {
      problems_.error(k.pos, "knob " + knob + " has no constant value");
      return;
    }
    for (unsigned i = 0; i < v->getArraySize(); ++i) {
      const APValue& el = i < v->getArrayInitializedElts() ? v->getArrayInitializedElt(i) : v->getArrayFiller();
      if (!el.isInt()) {
        problems_.error(k.pos, "knob " + knob + ": element " + std::to_string(i) + " is not an integer");
        return;
      }
      k.values.push_back(el.getInt().getExtValue());
    }
    if (k.values.empty()) {
      problems_.error(k.pos, "knob " + knob + " lists no values");
      return;
    }
    std::vector<long long> sorted = k.values;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
      problems_.error(k.pos, "knob " + knob + " lists a value twice: " + join_values(k.values) +
                                 " (the tuner would time the same kernel twice)");
      return;
    }
    const IntType& it = param_types_.at(p.name);
    for (long long x : k.values) {
      const bool fits = it.is_bool() ? (x == 0 || x == 1)
                        : it.is_signed ? (it.bits >= 64 || (x >= -(1LL << (it.bits - 1)) && x < (1LL << (it.bits - 1))))
                                       : (x >= 0 && (it.bits >= 63 || x < (1LL << it.bits)));
      if (!fits) {
        problems_.error(k.pos, "knob " + knob + " lists " + std::to_string(x) + ", which the " + p.type +
                                   " parameter '" + p.name + "' of " + where + " cannot hold");
        return;
      }
    }
    if (p.default_value &&
        std::find(k.values.begin(), k.values.end(), *p.default_value) == k.values.end()) {
      problems_.error(k.pos, "the default '" + p.name + " = " + *p.default_text + "' of " + where +
                                 " is not among the candidate values " + join_values(k.values) +
                                 " of knob " + knob +
                                 "; the default is what untuned keys run, so it must be a "
                                 "candidate the tuner also checks");
      return;
    }
    k.param = pi;
    e.knobs.push_back(std::move(k));
  }

  // ---- rules ----

  /// Collects what a condition depends on: template parameters directly, and through the entry's
  /// own constexpr members (kSmemBytes = ... kBlockM ...) and static member functions.
  class Dependencies : public RecursiveASTVisitor<Dependencies> {
   public:
    Dependencies(const std::set<const NamedDecl*>& params, const CXXRecordDecl* record)
        : params_(params), record_(record) {}
    bool VisitDeclRefExpr(DeclRefExpr* e) {
      const ValueDecl* d = e->getDecl();
      if (params_.count(d)) {
        params.insert(d->getNameAsString());
      } else if (d->getDeclContext() == record_ && seen_.insert(d).second) {
        members.insert(d->getNameAsString());
        if (const auto* v = dyn_cast<VarDecl>(d); v && v->getInit())
          TraverseStmt(const_cast<Expr*>(v->getInit()));
        if (const auto* f = dyn_cast<FunctionDecl>(d); f && f->hasBody())
          TraverseStmt(f->getBody());
      }
      return true;
    }
    bool VisitTemplateTypeParmTypeLoc(TemplateTypeParmTypeLoc tl) {
      if (params_.count(tl.getDecl())) params.insert(tl.getDecl()->getNameAsString());
      return true;
    }
    std::set<std::string> params;
    std::set<std::string> members;

   private:
    const std::set<const NamedDecl*>& params_;
    const CXXRecordDecl* record_;
    std::set<const Decl*> seen_;
  };

  void read_rules(CXXRecordDecl* rd, Entry& e, const std::string& where) {
    for (Decl* d : rd->decls()) {
      auto* sa = dyn_cast<StaticAssertDecl>(d);
      if (!sa) continue;
      Rule r;
      r.pos = pos(sa->getLocation());
      const Expr* cond = sa->getAssertExpr();
      r.condition = text(cond->getSourceRange());
      const StringLiteral* msg = sa->getMessage();
      if (!msg || msg->getCharByteWidth() != 1 || msg->getString().empty()) {
        problems_.error(r.pos, "static_assert(" + r.condition + ") in " + where +
                                   " has no message; a legality rule needs one: it is what the "
                                   "tuner records and the user reads when a configuration is "
                                   "refused");
        continue;
      }
      r.message = msg->getString().str();

      Dependencies deps(params_, rd);
      deps.TraverseStmt(const_cast<Expr*>(cond));
      for (const auto& p : e.params)  // in declaration order: the order a reader expects
        if (deps.params.count(p.name)) r.params.push_back(p.name);
      r.members.assign(deps.members.begin(), deps.members.end());

      std::string why;
      if (auto h = lower(cond, why)) r.host = std::move(*h);
      else r.not_host_reason = why;
      e.rules.push_back(std::move(r));
    }
  }

  std::optional<HostExpr> fail(std::string& why, std::string reason) const {
    if (why.empty()) why = std::move(reason);
    return std::nullopt;
  }

  std::optional<HostExpr> lower(const Expr* e, std::string& why) const {
    const std::string src = "'" + text(e->getSourceRange()) + "'";
    if (const auto* c = dyn_cast<ConstantExpr>(e)) return lower(c->getSubExpr(), why);
    if (const auto* p = dyn_cast<ParenExpr>(e)) return lower(p->getSubExpr(), why);
    if (const auto* s = dyn_cast<SubstNonTypeTemplateParmExpr>(e)) return lower(s->getReplacement(), why);

    auto type = int_type(e->getType(), ctx_);
    if (!type) return fail(why, src + " is not of integral type");
    HostExpr h;
    h.type = *type;

    if (const auto* lit = dyn_cast<IntegerLiteral>(e)) {
      h.literal = lit->getValue().getZExtValue();
      return h;
    }
    if (const auto* b = dyn_cast<CXXBoolLiteralExpr>(e)) {
      h.literal = b->getValue() ? 1 : 0;
      return h;
    }
    if (const auto* ch = dyn_cast<CharacterLiteral>(e)) {
      h.literal = ch->getValue();
      return h;
    }
    if (const auto* ref = dyn_cast<DeclRefExpr>(e)) {
      const ValueDecl* d = ref->getDecl();
      if (params_.count(d)) {
        if (!param_types_.count(d->getNameAsString()))
          return fail(why, "parameter '" + d->getNameAsString() + "' has no integral type");
        h.op = HostExpr::Op::param;
        h.param = d->getNameAsString();
        h.type = param_types_.at(h.param);
        return h;
      }
      if (const auto* ec = dyn_cast<EnumConstantDecl>(d)) {
        h.literal = ec->getInitVal().getExtValue();
        return h;
      }
      if (d->getDeclContext() == record_)
        return fail(why, "reads the member '" + d->getNameAsString() + "' (a member is computed by the device compiler)");
      return fail(why, "reads '" + d->getNameAsString() + "', which is not a template parameter");
    }
    if (const auto* cast = dyn_cast<CastExpr>(e)) {
      switch (cast->getCastKind()) {
        case CK_IntegralCast: case CK_IntegralToBoolean: case CK_NoOp: case CK_LValueToRValue: break;
        default: return fail(why, src + " converts from a non-integral type");
      }
      auto sub = lower(cast->getSubExpr(), why);
      if (!sub) return std::nullopt;
      h.op = HostExpr::Op::cast;
      h.implicit = isa<ImplicitCastExpr>(cast);
      h.kids.push_back(std::move(*sub));
      return h;
    }
    if (const auto* u = dyn_cast<UnaryOperator>(e)) {
      switch (u->getOpcode()) {
        case UO_Plus: h.op = HostExpr::Op::plus; break;
        case UO_Minus: h.op = HostExpr::Op::minus; break;
        case UO_Not: h.op = HostExpr::Op::bit_not; break;
        case UO_LNot: h.op = HostExpr::Op::log_not; break;
        default: return fail(why, src + " uses an operator with side effects or addresses");
      }
      auto sub = lower(u->getSubExpr(), why);
      if (!sub) return std::nullopt;
      h.kids.push_back(std::move(*sub));
      return h;
    }
    if (const auto* b = dyn_cast<BinaryOperator>(e)) {
      using Op = HostExpr::Op;
      static const std::map<BinaryOperatorKind, Op> ops = {
          {BO_Mul, Op::mul}, {BO_Div, Op::div}, {BO_Rem, Op::rem}, {BO_Add, Op::add},
          {BO_Sub, Op::sub}, {BO_Shl, Op::shl}, {BO_Shr, Op::shr}, {BO_LT, Op::lt},
          {BO_GT, Op::gt}, {BO_LE, Op::le}, {BO_GE, Op::ge}, {BO_EQ, Op::eq},
          {BO_NE, Op::ne}, {BO_And, Op::bit_and}, {BO_Xor, Op::bit_xor}, {BO_Or, Op::bit_or},
          {BO_LAnd, Op::log_and}, {BO_LOr, Op::log_or}};
      auto it = ops.find(b->getOpcode());
      if (it == ops.end()) return fail(why, src + " uses an assignment or comma operator");
      h.op = it->second;
      auto l = lower(b->getLHS(), why);
      auto r = lower(b->getRHS(), why);
      if (!l || !r) return std::nullopt;
      h.kids.push_back(std::move(*l));
      h.kids.push_back(std::move(*r));
      return h;
    }
    if (const auto* c = dyn_cast<ConditionalOperator>(e)) {
      h.op = HostExpr::Op::cond;
      auto a = lower(c->getCond(), why);
      auto b = lower(c->getTrueExpr(), why);
      auto d = lower(c->getFalseExpr(), why);
      if (!a || !b || !d) return std::nullopt;
      h.kids.push_back(std::move(*a));
      h.kids.push_back(std::move(*b));
      h.kids.push_back(std::move(*d));
      return h;
    }
    if (isa<UnaryExprOrTypeTraitExpr>(e)) return fail(why, src + " depends on a type (sizeof/alignof)");
    if (isa<CallExpr>(e)) return fail(why, src + " calls a function");
    return fail(why, src + " is not a template parameter, literal or operator");
  }

  ASTContext& ctx_;
  SourceManager& sm_;
  std::string root_;
  std::vector<Entry>& out_;
  Problems& problems_;
  PrintingPolicy policy_{ctx_.getLangOpts()};
  const CXXRecordDecl* record_ = nullptr;      // the current entry's class template pattern
  std::set<const NamedDecl*> params_;          // its template parameters
  std::map<std::string, IntType> param_types_; // its non-type parameters of integral type
};

}  // namespace

void extract_entries(ASTContext& ctx, const std::string& root, std::vector<Entry>& out,
                     Problems& problems) {
  llvm::SmallString<256> real;
  std::string r = root;
  if (!llvm::sys::fs::real_path(root, real)) r = std::string(real.str());
  Extractor(ctx, r, out, problems).TraverseDecl(ctx.getTranslationUnitDecl());
}

}  // namespace flashbias::manifest_tool
