// Package fhir holds the FHIR R4 knowledge the service needs: the resource
// types, the Patient compartment, instants and OperationOutcomes.
package fhir

import (
	"sort"
)

// resourceTypes are the 145 resource types of FHIR R4 (4.0.1).
var resourceTypes = []string{
	"Account", "ActivityDefinition", "AdverseEvent", "AllergyIntolerance", "Appointment",
	"AppointmentResponse", "AuditEvent", "Basic", "Binary", "BiologicallyDerivedProduct",
	"BodyStructure", "Bundle", "CapabilityStatement", "CarePlan", "CareTeam", "CatalogEntry",
	"ChargeItem", "ChargeItemDefinition", "Claim", "ClaimResponse", "ClinicalImpression",
	"CodeSystem", "Communication", "CommunicationRequest", "CompartmentDefinition", "Composition",
	"ConceptMap", "Condition", "Consent", "Contract", "Coverage", "CoverageEligibilityRequest",
	"CoverageEligibilityResponse", "DetectedIssue", "Device", "DeviceDefinition", "DeviceMetric",
	"DeviceRequest", "DeviceUseStatement", "DiagnosticReport", "DocumentManifest",
	"DocumentReference", "EffectEvidenceSynthesis", "Encounter", "Endpoint", "EnrollmentRequest",
	"EnrollmentResponse", "EpisodeOfCare", "EventDefinition", "Evidence", "EvidenceVariable",
	"ExampleScenario", "ExplanationOfBenefit", "FamilyMemberHistory", "Flag", "Goal",
	"GraphDefinition", "Group", "GuidanceResponse", "HealthcareService", "ImagingStudy",
	"Immunization", "ImmunizationEvaluation", "ImmunizationRecommendation", "ImplementationGuide",
	"InsurancePlan", "Invoice", "Library", "Linkage", "List", "Location", "Measure",
	"MeasureReport", "Media", "Medication", "MedicationAdministration", "MedicationDispense",
	"MedicationKnowledge", "MedicationRequest", "MedicationStatement", "MedicinalProduct",
	"MedicinalProductAuthorization", "MedicinalProductContraindication",
	"MedicinalProductIndication", "MedicinalProductIngredient", "MedicinalProductInteraction",
	"MedicinalProductManufactured", "MedicinalProductPackaged", "MedicinalProductPharmaceutical",
	"MedicinalProductUndesirableEffect", "MessageDefinition", "MessageHeader",
	"MolecularSequence", "NamingSystem", "NutritionOrder", "Observation",
	"ObservationDefinition", "OperationDefinition", "OperationOutcome", "Organization",
	"OrganizationAffiliation", "Parameters", "Patient", "PaymentNotice", "PaymentReconciliation",
	"Person", "PlanDefinition", "Practitioner", "PractitionerRole", "Procedure", "Provenance",
	"Questionnaire", "QuestionnaireResponse", "RelatedPerson", "RequestGroup", "ResearchDefinition",
	"ResearchElementDefinition", "ResearchStudy", "ResearchSubject", "RiskAssessment",
	"RiskEvidenceSynthesis", "Schedule", "SearchParameter", "ServiceRequest", "Slot", "Specimen",
	"SpecimenDefinition", "StructureDefinition", "StructureMap", "Subscription", "Substance",
	"SubstanceNucleicAcid", "SubstancePolymer", "SubstanceProtein",
	"SubstanceReferenceInformation", "SubstanceSourceMaterial", "SubstanceSpecification",
	"SupplyDelivery", "SupplyRequest", "Task", "TerminologyCapabilities", "TestReport",
	"TestScript", "ValueSet", "VerificationResult", "VisionPrescription",
}

var resourceTypeSet = func() map[string]bool {
	m := make(map[string]bool, len(resourceTypes))
	for _, t := range resourceTypes {
		m[t] = true
	}
	return m
}()

// IsResourceType reports whether t is an R4 resource type name (case-sensitive).
func IsResourceType(t string) bool { return resourceTypeSet[t] }

// notExportable are types that are never data to export: containers and
// messages of the API itself.
var notExportable = map[string]bool{
	"Bundle": true, "OperationOutcome": true, "Parameters": true, "CapabilityStatement": true,
	"TerminologyCapabilities": true,
}

// IsExportable reports whether t is a resource type a system export may hold.
func IsExportable(t string) bool { return resourceTypeSet[t] && !notExportable[t] }

// CompartmentParam is one search parameter that puts a resource in the
// Patient compartment, with the element paths its R4 SearchParameter
// expression reads, so that the engine can tell from a resource's own content
// which parameters reach which patients.
type CompartmentParam struct {
	Name  string   // search parameter code, e.g. "performer"; "_id" for Patient itself
	Paths []string // dotted element paths holding the References, e.g. "payee.party"
}

// cp builds a CompartmentParam.
func cp(name string, paths ...string) CompartmentParam { return CompartmentParam{name, paths} }

// patientCompartment is the R4 (4.0.1) Patient CompartmentDefinition as data:
// for each type, every search parameter that puts a resource in a patient's
// compartment, in the order the definition lists them. Source:
// http://hl7.org/fhir/R4/compartmentdefinition-patient.json ("resource"[].param),
// and for the paths the "expression" of each parameter in the R4
// search-parameters.json (a "where(resolve() is Patient)" is dropped: the
// engine only takes Patient references from a path anyway). Every path was
// checked mechanically against the 4.0.1 search-parameters.json (the copy in
// medizininformatik-initiative/blaze at 36adbdd1, sha256 dff84d79...): all 100
// (type, parameter) pairs below match their expressions exactly.
//
// Two deliberate differences: Patient is searched by "_id" first (the
// compartment's identity, which the definition states in prose) and then
// "link"; Device is not in the R4 compartment but is kept, as the IG allows,
// because a patient's devices are part of their record. Group ("member") is
// left out: a Group is the export's input, not a patient's data.
var patientCompartment = map[string][]CompartmentParam{
	"Account":                     {cp("subject", "subject")},
	"AdverseEvent":                {cp("subject", "subject")},
	"AllergyIntolerance":          {cp("patient", "patient"), cp("recorder", "recorder"), cp("asserter", "asserter")},
	"Appointment":                 {cp("actor", "participant.actor")},
	"AppointmentResponse":         {cp("actor", "actor")},
	"AuditEvent":                  {cp("patient", "agent.who", "entity.what")},
	"Basic":                       {cp("patient", "subject"), cp("author", "author")},
	"BodyStructure":               {cp("patient", "patient")},
	"CarePlan":                    {cp("patient", "subject"), cp("performer", "activity.detail.performer")},
	"CareTeam":                    {cp("patient", "subject"), cp("participant", "participant.member")},
	"ChargeItem":                  {cp("subject", "subject")},
	"Claim":                       {cp("patient", "patient"), cp("payee", "payee.party")},
	"ClaimResponse":               {cp("patient", "patient")},
	"ClinicalImpression":          {cp("subject", "subject")},
	"Communication":               {cp("subject", "subject"), cp("sender", "sender"), cp("recipient", "recipient")},
	"CommunicationRequest":        {cp("subject", "subject"), cp("sender", "sender"), cp("recipient", "recipient"), cp("requester", "requester")},
	"Composition":                 {cp("subject", "subject"), cp("author", "author"), cp("attester", "attester.party")},
	"Condition":                   {cp("patient", "subject"), cp("asserter", "asserter")},
	"Consent":                     {cp("patient", "patient")},
	"Coverage":                    {cp("policy-holder", "policyHolder"), cp("subscriber", "subscriber"), cp("beneficiary", "beneficiary"), cp("payor", "payor")},
	"CoverageEligibilityRequest":  {cp("patient", "patient")},
	"CoverageEligibilityResponse": {cp("patient", "patient")},
	"DetectedIssue":               {cp("patient", "patient")},
	"Device":                      {cp("patient", "patient")},
	"DeviceRequest":               {cp("subject", "subject"), cp("performer", "performer")},
	"DeviceUseStatement":          {cp("subject", "subject")},
	"DiagnosticReport":            {cp("subject", "subject")},
	"DocumentManifest":            {cp("subject", "subject"), cp("author", "author"), cp("recipient", "recipient")},
	"DocumentReference":           {cp("subject", "subject"), cp("author", "author")},
	"Encounter":                   {cp("patient", "subject")},
	"EnrollmentRequest":           {cp("subject", "candidate")},
	"EpisodeOfCare":               {cp("patient", "patient")},
	"ExplanationOfBenefit":        {cp("patient", "patient"), cp("payee", "payee.party")},
	"FamilyMemberHistory":         {cp("patient", "patient")},
	"Flag":                        {cp("patient", "subject")},
	"Goal":                        {cp("patient", "subject")},
	"ImagingStudy":                {cp("patient", "subject")},
	"Immunization":                {cp("patient", "patient")},
	"ImmunizationEvaluation":      {cp("patient", "patient")},
	"ImmunizationRecommendation":  {cp("patient", "patient")},
	"Invoice":                     {cp("subject", "subject"), cp("patient", "subject"), cp("recipient", "recipient")},
	"List":                        {cp("subject", "subject"), cp("source", "source")},
	"MeasureReport":               {cp("patient", "subject")},
	"Media":                       {cp("subject", "subject")},
	"MedicationAdministration":    {cp("patient", "subject"), cp("performer", "performer.actor"), cp("subject", "subject")},
	"MedicationDispense":          {cp("subject", "subject"), cp("patient", "subject"), cp("receiver", "receiver")},
	"MedicationRequest":           {cp("subject", "subject")},
	"MedicationStatement":         {cp("subject", "subject")},
	"MolecularSequence":           {cp("patient", "patient")},
	"NutritionOrder":              {cp("patient", "patient")},
	"Observation":                 {cp("subject", "subject"), cp("performer", "performer")},
	"Patient":                     {cp("_id"), cp("link", "link.other")},
	"Person":                      {cp("patient", "link.target")},
	"Procedure":                   {cp("patient", "subject"), cp("performer", "performer.actor")},
	"Provenance":                  {cp("patient", "target")},
	"QuestionnaireResponse":       {cp("subject", "subject"), cp("author", "author")},
	"RelatedPerson":               {cp("patient", "patient")},
	"RequestGroup":                {cp("subject", "subject"), cp("participant", "action.participant")},
	"ResearchSubject":             {cp("individual", "individual")},
	"RiskAssessment":              {cp("subject", "subject")},
	"Schedule":                    {cp("actor", "actor")},
	"ServiceRequest":              {cp("subject", "subject"), cp("performer", "performer")},
	"Specimen":                    {cp("subject", "subject")},
	"SupplyDelivery":              {cp("patient", "patient")},
	"SupplyRequest":               {cp("subject", "deliverTo")},
	"VisionPrescription":          {cp("patient", "patient")},
}

// PatientCompartment returns the parameters by which type t joins the
// Patient compartment, in order, and false if t is not in it. The slice is
// shared: do not modify it.
func PatientCompartment(t string) ([]CompartmentParam, bool) {
	l, ok := patientCompartment[t]
	return l, ok
}

// PatientCompartmentTypes lists the Patient compartment types, sorted.
func PatientCompartmentTypes() []string {
	out := make([]string, 0, len(patientCompartment))
	for t := range patientCompartment {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}
