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

// CompartmentLink says how a resource type belongs to the Patient compartment:
// the search parameter that finds a patient's resources, and the elements
// behind it that name the patient.
type CompartmentLink struct {
	Param    string   // search parameter, e.g. "patient"; "_id" for Patient itself
	Elements []string // dotted element paths holding the Reference, e.g. "subject"
}

// patientCompartment maps the R4 Patient compartment types
// (CompartmentDefinition/patient) to the one search parameter we search them
// by. Where R4 lists several parameters (Observation: subject, performer), we
// use the one that names the patient the resource is about; resources that
// reach the compartment only through an author or performer are not
// exported at Patient/Group level (docs/design.md). Device is not in the R4
// compartment but is included, as the IG allows, because a patient's devices
// are part of their record.
var patientCompartment = map[string]CompartmentLink{
	"Account":                     {"patient", []string{"subject"}},
	"AdverseEvent":                {"subject", []string{"subject"}},
	"AllergyIntolerance":          {"patient", []string{"patient"}},
	"Appointment":                 {"patient", []string{"participant.actor"}},
	"AppointmentResponse":         {"patient", []string{"actor"}},
	"AuditEvent":                  {"patient", []string{"agent.who", "entity.what"}},
	"Basic":                       {"patient", []string{"subject"}},
	"BodyStructure":               {"patient", []string{"patient"}},
	"CarePlan":                    {"patient", []string{"subject"}},
	"CareTeam":                    {"patient", []string{"subject"}},
	"ChargeItem":                  {"patient", []string{"subject"}},
	"Claim":                       {"patient", []string{"patient"}},
	"ClaimResponse":               {"patient", []string{"patient"}},
	"ClinicalImpression":          {"patient", []string{"subject"}},
	"Communication":               {"patient", []string{"subject"}},
	"CommunicationRequest":        {"patient", []string{"subject"}},
	"Composition":                 {"patient", []string{"subject"}},
	"Condition":                   {"patient", []string{"subject"}},
	"Consent":                     {"patient", []string{"patient"}},
	"Coverage":                    {"beneficiary", []string{"beneficiary"}},
	"CoverageEligibilityRequest":  {"patient", []string{"patient"}},
	"CoverageEligibilityResponse": {"patient", []string{"patient"}},
	"DetectedIssue":               {"patient", []string{"patient"}},
	"Device":                      {"patient", []string{"patient"}},
	"DeviceRequest":               {"patient", []string{"subject"}},
	"DeviceUseStatement":          {"patient", []string{"subject"}},
	"DiagnosticReport":            {"patient", []string{"subject"}},
	"DocumentManifest":            {"patient", []string{"subject"}},
	"DocumentReference":           {"patient", []string{"subject"}},
	"Encounter":                   {"patient", []string{"subject"}},
	"EnrollmentRequest":           {"patient", []string{"candidate"}},
	"EpisodeOfCare":               {"patient", []string{"patient"}},
	"ExplanationOfBenefit":        {"patient", []string{"patient"}},
	"FamilyMemberHistory":         {"patient", []string{"patient"}},
	"Flag":                        {"patient", []string{"subject"}},
	"Goal":                        {"patient", []string{"subject"}},
	"ImagingStudy":                {"patient", []string{"subject"}},
	"Immunization":                {"patient", []string{"patient"}},
	"ImmunizationEvaluation":      {"patient", []string{"patient"}},
	"ImmunizationRecommendation":  {"patient", []string{"patient"}},
	"Invoice":                     {"patient", []string{"subject"}},
	"List":                        {"patient", []string{"subject"}},
	"MeasureReport":               {"patient", []string{"subject"}},
	"Media":                       {"patient", []string{"subject"}},
	"MedicationAdministration":    {"patient", []string{"subject"}},
	"MedicationDispense":          {"patient", []string{"subject"}},
	"MedicationRequest":           {"patient", []string{"subject"}},
	"MedicationStatement":         {"patient", []string{"subject"}},
	"MolecularSequence":           {"patient", []string{"patient"}},
	"NutritionOrder":              {"patient", []string{"patient"}},
	"Observation":                 {"patient", []string{"subject"}},
	"Patient":                     {"_id", nil},
	"Person":                      {"patient", []string{"link.target"}},
	"Procedure":                   {"patient", []string{"subject"}},
	"Provenance":                  {"patient", []string{"target"}},
	"QuestionnaireResponse":       {"patient", []string{"subject"}},
	"RelatedPerson":               {"patient", []string{"patient"}},
	"RequestGroup":                {"patient", []string{"subject"}},
	"ResearchSubject":             {"individual", []string{"individual"}},
	"RiskAssessment":              {"patient", []string{"subject"}},
	"Schedule":                    {"actor", []string{"actor"}},
	"ServiceRequest":              {"patient", []string{"subject"}},
	"Specimen":                    {"patient", []string{"subject"}},
	"SupplyDelivery":              {"patient", []string{"patient"}},
	"VisionPrescription":          {"patient", []string{"patient"}},
}

// PatientCompartment returns how type t joins the Patient compartment, and
// false if t is not in it.
func PatientCompartment(t string) (CompartmentLink, bool) {
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
